"""Every configuration key of fmicl-engine, with its default and why, in one place.

A config file is TOML with the sections below; a key left out takes the default written here.
Each setting carries its own constraints (``choices``, bounds) so that the loader
(``fmicl_engine.config.loader``) can reject a bad value, naming its key path, before any work
starts. The ``[loss]`` section is the exception: its keys are the keyword arguments of the chosen
objective in ``fmicl_engine.loss.LOSS_REGISTRY``, so they are validated against that objective.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def setting(default, why: str, *, choices=None, ge=None, gt=None, le=None, lt=None, path=False):
    """A dataclass field with a default, the reason for it, and the constraints the loader checks:
    ``choices``, the bounds (every number has a lower and an upper one, which a run can honour; every
    float is also finite), and ``path`` (a filesystem path: no control characters)."""
    return field(
        default=default,
        metadata={"why": why, "choices": choices, "ge": ge, "gt": gt, "le": le, "lt": lt, "path": path},
    )


def section(cls):
    """A nested section: its default is the section's own defaults."""
    return field(default_factory=cls, metadata={"why": cls.__doc__})


@dataclass(frozen=True)
class RunConfig:
    """Where and how a run happens."""

    seed: int = setting(0, "one seed fixes the initialisation, the data order and every augmentation. At most "
                        "2**32 - 1: the digits split reads it modulo 2**32, and the MI critics seed torch (64 bits) "
                        "with a multiple of it", ge=0, le=2**32 - 1)
    device: str = setting("auto", "auto picks cuda when torch sees a GPU, else cpu", choices=("auto", "cpu", "cuda"))
    out_dir: str = setting("", "empty means runs/<config file stem>; `run --out DIR` overrides it", path=True)
    threads: int = setting(0, "torch CPU threads per process; 0 keeps torch's default (one per core). Small models "
                           "gain little from more, and OpenMP threads stall when other processes share the cores. "
                           "At most 1024, more than any one machine's cores: a config moves between machines",
                           ge=0, le=1024)
    dist_timeout_s: int = setting(600, "torchrun runs: a collective that waits longer than this fails (naming the "
                                  "rank) instead of hanging when another rank has died; at most a day, beyond "
                                  "which a wait is a hang", ge=10, le=86400)


@dataclass(frozen=True)
class DigitsConfig:
    """The bundled sklearn digits (1,797 8x8 images, 10 classes): small enough for a CPU run in a minute."""

    test_fraction: float = setting(0.25, "stratified held-out share, never seen in pretraining; the probe's test set", gt=0.0, lt=1.0)
    image_size: int = setting(16, "8x8 digits upsampled 2x: crops and rotations then keep the strokes readable; "
                              "at most 256 (32x): larger only blurs the same 64 pixels, at a cost in memory per view",
                              ge=8, le=256)
    crop_scale_min: float = setting(0.7, "smallest crop area fraction; smaller crops cut digits into ambiguous parts", gt=0.0, le=1.0)
    max_rotation_deg: float = setting(10.0, "digits are not rotation-invariant (6 vs 9): keep rotations small", ge=0.0, le=180.0)
    noise_std: float = setting(0.1, "additive Gaussian pixel noise on [0, 1] images; a cheap photometric "
                               "augmentation. At most 1: noise of that std already hides the image", ge=0.0, le=1.0)


@dataclass(frozen=True)
class ImageFolderConfig:
    """An ImageFolder / ImageNet tree read by the two-view pipeline (fmicl_engine.data.build_two_view_loader)."""

    root: str = setting("", "required for dataset = imagefolder: the class-per-folder training tree", path=True)
    val_root: str = setting("", "the held-out class-per-folder tree (ImageNet's val/), read by evaluation only",
                            path=True)
    image_size: int = setting(224, "the standard ImageNet pretraining resolution; at most 1024, beyond which a "
                              "batch of views does not fit in a GPU", ge=8, le=1024)
    augment: str = setting("simclr", "SimCLR's symmetric recipe; byol is its asymmetric variant", choices=("simclr", "byol"))
    num_threads: int = setting(4, "decoding threads per process (at most 256)", ge=1, le=256)
    device: str = setting("cpu", "gpu decodes and augments on the GPU (DALI mixed backend)", choices=("cpu", "gpu"))
    on_bad_file: str = setting("skip", "a corrupt file should not stop a multi-day run; it is counted and named", choices=("skip", "error"))


@dataclass(frozen=True)
class TorchvisionSetConfig:
    """CIFAR-10, CIFAR-100 or STL-10, read by torchvision's dataset class from a local copy (never downloaded)."""

    root: str = setting("", "required for dataset = cifar10 / cifar100 / stl10: the directory torchvision's class "
                        "reads (holding cifar-10-batches-py, cifar-100-python or stl10_binary)", path=True)
    image_size: int = setting(0, "0: the dataset's own resolution (32 for CIFAR, 96 for STL-10); at most 1024, "
                              "beyond which a batch of views does not fit in a GPU", ge=0, le=1024)
    augment: str = setting("", "empty: the dataset's own two-view recipe (SimCLR's CIFAR recipe without blur for "
                           "CIFAR, with blur for STL-10)", choices=("", "simclr", "simclr_cifar", "byol"))
    split: str = setting("", "empty: the dataset's pretraining split (train for CIFAR, train+unlabeled for STL-10)",
                         choices=("", "train", "unlabeled", "train+unlabeled"))
    num_workers: int = setting(4, "augmentation worker processes per rank; the data order and views do not depend "
                               "on it (at most 256)", ge=0, le=256)


@dataclass(frozen=True)
class DataConfig:
    """What the encoder is pretrained on."""

    dataset: str = setting("digits", "bundled with scikit-learn, so the default config runs offline",
                           choices=("digits", "imagefolder", "cifar10", "cifar100", "stl10"))
    digits: DigitsConfig = section(DigitsConfig)
    imagefolder: ImageFolderConfig = section(ImageFolderConfig)
    torchvision: TorchvisionSetConfig = section(TorchvisionSetConfig)


@dataclass(frozen=True)
class ModelConfig:
    """The encoder (whose features are evaluated) and the projector (whose output the loss sees)."""

    arch: str = setting("digits_cnn", "a 3-block CNN: fast on CPU; resnet18/50 are torchvision's (weights=None); "
                        "the _cifar variants replace the 7x7/2 stem and max-pool with a 3x3/1 conv for 32-96 px data",
                        choices=("digits_cnn", "resnet18", "resnet50", "resnet18_cifar", "resnet50_cifar"))
    cnn_width: int = setting(32, "digits_cnn channels of the first block, doubled per block (features = 4x this); at "
                             "most 1024, whose last block alone holds ~300 MB of weights", ge=1, le=1024)
    projector_layers: int = setting(2, "linear layers of the MLP head (SimCLR v1: 2, v2: 3; at most 16)", ge=1, le=16)
    projector_hidden_dim: int = setting(256, "width of the head's hidden layers; at most 16384 (SimCLR 2048, "
                                        "Barlow Twins 8192): a 16384-wide square layer is already 1 GiB of weights",
                                        ge=1, le=16384)
    projector_out_dim: int = setting(64, "the embedding dimension the objective sees (at most 16384, as the hidden "
                                     "width)", ge=1, le=16384)
    projector_batchnorm: bool = setting(False, "BatchNorm1d after each hidden linear layer (SimCLR v2). Off for the "
                                        "digits: torch's CPU batch_norm on 2-D inputs sums in a thread-count-dependent "
                                        "order, so runs would differ in the last bits between thread counts")
    sync_batchnorm: bool = setting(False, "torchrun runs: batch statistics over the global batch rather than each "
                                   "rank's share (torch's SyncBatchNorm on GPU, the engine's own on CPU)")


@dataclass(frozen=True)
class LossConfig:
    """The objective: ``name`` is a key of fmicl_engine.loss.LOSS_REGISTRY, the other keys its keyword
    arguments. The loader fills in the objective's own defaults, so ``options`` is complete."""

    name: str = setting("fmicl", "f-MICL, the family this engine is built for")
    # (keyword, value) pairs in the objective's signature order: immutable, hashable, TOML-writable.
    options: tuple[tuple[str, Any], ...] = ()

    def kwargs(self) -> dict[str, Any]:
        return dict(self.options)


@dataclass(frozen=True)
class OptimConfig:
    """The optimiser and its learning-rate schedule (linear warmup, then cosine decay, per step)."""

    name: str = setting("adamw", "robust without tuning at small batch; lars is for large-batch SGD (SimCLR at 4096)", choices=("adamw", "sgd", "lars"))
    lr: float = setting(2e-3, "peak learning rate, reached at the end of warmup (tuned on the digits); at most "
                        "100: LARS's 0.3 x batch/256 is 76.8 at the largest train.batch_size, and beyond that "
                        "the first steps overflow", gt=0.0, le=100.0)
    weight_decay: float = setting(1e-4, "mild L2; not applied to biases and norm parameters (see below); at most 1, a "
                                  "decay that would erase the weights in a step", ge=0.0, le=1.0)
    momentum: float = setting(0.9, "sgd and lars momentum", ge=0.0, lt=1.0)
    beta1: float = setting(0.9, "adamw first-moment decay", ge=0.0, lt=1.0)
    beta2: float = setting(0.999, "adamw second-moment decay", ge=0.0, lt=1.0)
    trust_coefficient: float = setting(1e-3, "lars: the layer-wise trust ratio eta of You et al. (2017); at most 1",
                                       gt=0.0, le=1.0)
    exclude_bias_and_norm: bool = setting(True, "biases and norm scales need neither decay nor lars adaptation (SimCLR, BYOL)")
    warmup_epochs: float = setting(1.0, "a short linear warmup avoids early divergence at a high lr; at most "
                                   "train.epochs' own limit, 10000 (a longer one is capped at the run's length)",
                                   ge=0.0, le=10000.0)
    min_lr_ratio: float = setting(0.0, "cosine decays to lr * this at the last step", ge=0.0, le=1.0)


@dataclass(frozen=True)
class TrainConfig:
    """The pretraining loop."""

    epochs: int = setting(50, "passes over the training split; 50 on the digits is ~500 steps, well into the plateau "
                          "(at most 10000; long schedules are 800-1000)", ge=1, le=10000)
    batch_size: int = setting(128, "the global batch: images per step over all ranks (two views each), split evenly "
                              "across torchrun's processes; 254 negatives per anchor, 10 steps per digits epoch. "
                              "At most 65536 (2**16; SimCLR's largest is 32768)", ge=2, le=65536)
    max_steps: int = setting(0, "0: epochs decide; otherwise stop after this many steps (smoke runs); at most 10**9",
                             ge=0, le=10**9)
    log_every: int = setting(10, "steps between metrics lines; reading the loss is a device sync point (at most "
                             "10**9)", ge=1, le=10**9)
    precision: str = setting("fp32", "bf16/fp16 run the encoder and projector under autocast (fp16 with a gradient "
                             "scaler); the loss is always computed in float32", choices=("fp32", "bf16", "fp16"))
    channels_last: bool = setting(False, "NHWC memory layout for convolutional encoders: faster tensor-core "
                                  "convolutions on GPU under bf16/fp16")
    compile: bool = setting(False, "torch.compile the encoder: faster steps after a compile of tens of seconds")
    grad_clip: float = setting(0.0, "0: no clipping; otherwise the global gradient norm is clipped to this "
                               "(at most 1e6, which no longer clips anything)", ge=0.0, le=1e6)
    checkpoint: bool = setting(True, "save checkpoints atomically under DIR/checkpoints; a rerun into DIR resumes "
                               "from the newest valid one")
    checkpoint_every_steps: int = setting(0, "0: at each epoch's end; otherwise every this many steps. Always also at "
                                          "the end and when SIGTERM/SIGUSR1/SIGINT asks the run to stop (at most "
                                          "10**9)", ge=0, le=10**9)
    keep_checkpoints: int = setting(2, "the newest this many are kept; more than one, so that a checkpoint damaged "
                                    "after its write still leaves one to resume from (at most 1000)", ge=1, le=1000)


@dataclass(frozen=True)
class EvalConfig:
    """Linear-probe evaluation of the frozen encoder, before (random init) and after pretraining."""

    linear_probe: bool = setting(True, "the standard measure of a self-supervised representation")
    features: str = setting("encoder", "probe the encoder's features (as SimCLR does), not the projector's output", choices=("encoder", "projector"))
    probe_c: float = setting(1.0, "inverse L2 strength of the multinomial logistic-regression probe on standardised "
                             "features; in [1e-6, 1e6]: beyond, the penalty 1/C swamps or vanishes from the loss",
                             ge=1e-6, le=1e6)
    probe_max_iter: int = setting(1000, "L-BFGS iterations; enough to converge on a few thousand samples (at "
                                  "most 10**6)", ge=1, le=10**6)
    labels_per_class: int = setting(0, "0: the probe sees every training label (standard); n > 0: n per class, which "
                                    "shows what a representation adds where all labels saturate (the digits); at most "
                                    "10**6", ge=0, le=10**6)
    label_subsets: int = setting(5, "with labels_per_class > 0: mean over this many seeded label subsets, "
                                 "since a few-label probe varies with the draw (at most 1000)", ge=1, le=1000)
    batch_size: int = setting(512, "images per forward pass when extracting features (at most 65536, as "
                              "train.batch_size)", ge=1, le=65536)
    knn: bool = setting(True, "weighted kNN on frozen features after pretraining (Wu et al. 2018)")
    knn_k: int = setting(200, "neighbours that vote (the instance-discrimination protocol's 200; at most 10**5)",
                         ge=1, le=10**5)
    knn_temperature: float = setting(0.1, "votes weigh exp(cosine similarity / this); at most 100, where every vote "
                                     "weighs the same", gt=0.0, le=100.0)
    linear_epochs: int = setting(100, "epochs of the SGD linear probe on frozen features; 0: no SGD probe (at most "
                                 "10000, as train.epochs)", ge=0, le=10000)
    linear_lr: float = setting(0.1, "the SGD probe's peak learning rate (cosine schedule); at most 100, as optim.lr",
                               gt=0.0, le=100.0)
    linear_batch_size: int = setting(256, "the SGD probe's batch of features (at most 65536)", ge=1, le=65536)
    geometry_pairs: int = setting(1024, "held-out positive pairs for alignment, uniformity, similarity histograms "
                                  "and the MI estimates; 0: none. At most 2**20: the histograms hold every pair's "
                                  "similarity", ge=0, le=2**20)
    mi_steps: int = setting(300, "training steps of each critic for the InfoNCE, NWJ and DV estimates between the "
                            "views' held-out embeddings; 0: no MI estimates (at most 10**6)", ge=0, le=10**6)
    online_probe: bool = setting(True, "a linear classifier trained on detached features during pretraining; its "
                                 "top-1 is logged each epoch (labelled data sets)")


@dataclass(frozen=True)
class Config:
    """A complete, validated configuration (see fmicl_engine.config.load_config)."""

    run: RunConfig = section(RunConfig)
    data: DataConfig = section(DataConfig)
    model: ModelConfig = section(ModelConfig)
    loss: LossConfig = section(LossConfig)
    optim: OptimConfig = section(OptimConfig)
    train: TrainConfig = section(TrainConfig)
    eval: EvalConfig = section(EvalConfig)
