# Decides whether the project's DALI operators (cpp/dali: fmicl.color_jitter) are built, and with
# which backends: FMICL_DALI = AUTO (the default: when DALI is importable), ON (required) or OFF.
#
# Inputs: FMICL_DALI, FMICL_WITH_CUDA (see cuda.cmake), Python_EXECUTABLE.
# Outputs: FMICL_DALI_VERSION ("" when not built), DALI_INCLUDE_DIR, DALI_LIB_DIR,
# DALI_CUDA_INCLUDE_DIRS, FMICL_DALI_WITH_CUDA (the GPU backend is built too).
#
# DALI's headers include the CUDA runtime's, for host code too. Those of a CUDA toolkit serve,
# and so do those of the nvidia-* wheels, without a toolkit (scripts/install.sh installs them):
# nvidia/cu13/include (CUDA 13: nvidia-cuda-runtime, -crt, -cccl), or nvidia/cuda_runtime,
# nvidia/cuda_nvcc and nvidia/cuda_cccl (CUDA 12: nvidia-cuda-runtime-cu12, -nvcc-cu12,
# -cccl-cu12). The GPU backend (color_jitter_gpu.cu) is compiled when the CUDA kernels are and
# DALI was built for the same CUDA major as the toolkit; otherwise the operator has its CPU
# backend only, and a GPU pipeline uses DALI's built-in colour operators (data/dali_ops.py).

set(FMICL_DALI "AUTO" CACHE STRING "Build the DALI operators: AUTO (when DALI is installed), ON or OFF")
set_property(CACHE FMICL_DALI PROPERTY STRINGS AUTO ON OFF)
string(TOUPPER "${FMICL_DALI}" FMICL_DALI)
if(NOT FMICL_DALI MATCHES "^(AUTO|ON|OFF)$")
  message(FATAL_ERROR "FMICL_DALI must be AUTO, ON or OFF, got '${FMICL_DALI}'")
endif()

set(FMICL_DALI_VERSION "")
set(FMICL_DALI_WITH_CUDA FALSE)
set(DALI_CUDA_INCLUDE_DIRS "")

if(NOT FMICL_DALI STREQUAL "OFF")
  # Prints: include dir, lib dir, version, DALI's CUDA major ("" if unknown), then the wheel
  # folders that together hold the CUDA runtime headers DALI's include ("" if some are missing).
  execute_process(
    COMMAND "${Python_EXECUTABLE}" -c [=[
import importlib.metadata as md, os
import nvidia, nvidia.dali, nvidia.dali.sysconfig as s
names = [d.metadata['Name'] or '' for d in md.distributions()]
major = next((n.lower()[len('nvidia-dali-cuda'):-1] for n in names
              if n.lower().startswith('nvidia-dali-cuda')), '')
roots = list(nvidia.__path__)
dirs = [os.path.join(r, f'cu{major}', 'include') for r in roots if major]
dirs += [os.path.join(r, p, 'include') for r in roots for p in ('cuda_runtime', 'cuda_nvcc', 'cuda_cccl')]
found = []
for header in ('cuda_runtime.h', os.path.join('crt', 'host_config.h'), os.path.join('nv', 'target')):
    d = next((d for d in dirs if os.path.exists(os.path.join(d, header))), None)
    if d is None:
        found = []
        break
    if d not in found:
        found.append(d)
print(s.get_include_dir()); print(s.get_lib_dir()); print(nvidia.dali.__version__); print(major)
print(','.join(found))
]=]
    OUTPUT_VARIABLE _dali_info RESULT_VARIABLE _dali_rc ERROR_QUIET)
  if(_dali_rc EQUAL 0)
    string(REPLACE "\n" ";" _dali_info "${_dali_info}")
    list(GET _dali_info 0 DALI_INCLUDE_DIR)
    list(GET _dali_info 1 DALI_LIB_DIR)
    list(GET _dali_info 2 _dali_version)
    list(GET _dali_info 3 _dali_cuda_major)
    list(GET _dali_info 4 _wheel_dirs)
    string(REPLACE "," ";" _wheel_dirs "${_wheel_dirs}")
    # The toolkit's headers when the GPU backend is compiled with it (they match its nvcc);
    # otherwise the wheels', else a toolkit's.
    set(_toolkit_dirs "")
    if(FMICL_WITH_CUDA)
      set(_toolkit_dirs ${CUDAToolkit_INCLUDE_DIRS})
      string(REGEX MATCH "^[0-9]+" _toolkit_major "${CUDAToolkit_VERSION}")
    else()
      find_package(CUDAToolkit QUIET)
      if(CUDAToolkit_FOUND)
        set(_toolkit_dirs ${CUDAToolkit_INCLUDE_DIRS})
      endif()
    endif()
    foreach(_dir IN LISTS _toolkit_dirs)
      if(EXISTS "${_dir}/cccl/nv/target")  # CUDA 13 toolkits keep CCCL under include/cccl
        list(APPEND _toolkit_dirs "${_dir}/cccl")
      endif()
    endforeach()
    if(FMICL_WITH_CUDA AND _dali_cuda_major STREQUAL _toolkit_major)
      set(FMICL_DALI_WITH_CUDA TRUE)
      set(DALI_CUDA_INCLUDE_DIRS ${_toolkit_dirs})
    elseif(_wheel_dirs)
      set(DALI_CUDA_INCLUDE_DIRS ${_wheel_dirs})
    else()
      set(DALI_CUDA_INCLUDE_DIRS ${_toolkit_dirs})
    endif()
  endif()
  if(NOT _dali_rc EQUAL 0 OR NOT DALI_CUDA_INCLUDE_DIRS)
    set(_why "DALI is not importable by ${Python_EXECUTABLE}")
    if(_dali_rc EQUAL 0)
      set(_why "no CUDA runtime headers for DALI's headers (scripts/install.sh installs them; or a CUDA toolkit)")
    endif()
    if(FMICL_DALI STREQUAL "ON")
      message(FATAL_ERROR "fmicl_engine: FMICL_DALI=ON but ${_why}")
    endif()
    message(STATUS "fmicl_engine: DALI operators not built: ${_why}")
  else()
    set(FMICL_DALI_VERSION "${_dali_version}")
    if(FMICL_DALI_WITH_CUDA)
      set(_backends "CPU and GPU")
    elseif(FMICL_WITH_CUDA)
      set(_backends "CPU only: DALI is built for CUDA ${_dali_cuda_major}, the toolkit is CUDA ${_toolkit_major}")
    else()
      set(_backends "CPU only: no CUDA kernels")
    endif()
    message(STATUS "fmicl_engine: DALI ${FMICL_DALI_VERSION} operators (${_backends})")
  endif()
endif()
