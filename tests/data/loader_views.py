"""What a two-view loader yields, keyed by dataset index (shared by the loaders' tests)."""


def views_by_index(loader):
    """{dataset index: (view1, view2, label)} for each batch of one epoch of ``loader``."""
    shard = loader.shard(loader.epoch).tolist()
    out, start = [], loader.position
    for view1, view2, labels in loader:
        index = shard[start : start + len(labels)]
        out.append({i: (a, b, y) for i, a, b, y in zip(index, view1, view2, labels)})
        start += len(labels)
    return out
