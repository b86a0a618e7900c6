// Input checks at the top of each host op: small named macros around TORCH_CHECK, so every
// message names the op and the offending value.
#pragma once

#include <c10/util/Exception.h>

#define FMICL_CHECK_ARG(op, cond, ...) TORCH_CHECK((cond), op, ": ", __VA_ARGS__)

#define FMICL_CHECK_DEVICE(op, x, dev)                                                       \
  TORCH_CHECK((x).device().type() == (dev), op, ": ", #x, " must be on ", (dev), ", got ", \
              (x).device())

#define FMICL_CHECK_SAME_DEVICE(op, x, y)                                                   \
  TORCH_CHECK((x).device() == (y).device(), op, ": ", #x, " and ", #y,                     \
              " must be on the same device, got ", (x).device(), " and ", (y).device())

#define FMICL_CHECK_DIM(op, x, n) \
  TORCH_CHECK((x).dim() == (n), op, ": ", #x, " must have ", (n), " dims, got shape ", (x).sizes())

#define FMICL_CHECK_CONTIGUOUS(op, x) \
  TORCH_CHECK((x).is_contiguous(), op, ": ", #x, " must be contiguous")

#define FMICL_CHECK_FLOATING(op, x)                                                          \
  TORCH_CHECK((x).scalar_type() == at::kFloat || (x).scalar_type() == at::kDouble ||        \
                  (x).scalar_type() == at::kHalf || (x).scalar_type() == at::kBFloat16,      \
              op, ": ", #x, " must be float16, bfloat16, float32 or float64, got ",         \
              (x).scalar_type())

#define FMICL_CHECK_DTYPE(op, x, dtype) \
  TORCH_CHECK((x).scalar_type() == (dtype), op, ": ", #x, " must be ", (dtype), ", got ", (x).scalar_type())

#define FMICL_CHECK_POSITIVE(op, name, v) \
  TORCH_CHECK((v) > 0.0 && std::isfinite(v), op, ": ", name, " must be a finite number > 0, got ", (v))
