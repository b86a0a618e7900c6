# Decides whether the CUDA kernels are built: FMICL_CUDA = AUTO (the default), ON or OFF.
#
#   AUTO  builds them when a CUDA compiler works here and its major version is torch's CUDA
#         major (torch.version.cuda); otherwise builds CPU only and says why in one STATUS line.
#   ON    requires them: the same checks, but a failed one is a fatal error.
#   OFF   CPU only.
#
# Inputs: FMICL_CUDA, TORCH_CUDA_VERSION ("" for a CPU-only torch), Python_EXECUTABLE.
# Outputs: FMICL_WITH_CUDA (TRUE/FALSE), FMICL_CUDA_WHY (a sentence), and when TRUE the CUDA
# language enabled, CUDAToolkit found, CMAKE_CUDA_ARCHITECTURES set and FMICL_CUDA_EXTRA_INCLUDES
# (header folders from the nvidia-* wheels that a slim toolkit lacks, possibly empty).
#
# The compiler is looked for in this order: CMAKE_CUDA_COMPILER, $CUDACXX, $CUDA_HOME/bin/nvcc,
# $CUDA_PATH/bin/nvcc, nvcc on PATH, /usr/local/cuda/bin/nvcc; the first whose major version
# matches torch's is used. An `nvcc` that is a wrapper script is fine: enable_language(CUDA) takes
# the toolkit root from `nvcc -v`, not from the wrapper's folder.

set(FMICL_WITH_CUDA FALSE)
set(FMICL_CUDA_WHY "")
set(FMICL_CUDA_EXTRA_INCLUDES "")

function(_fmicl_nvcc_version nvcc out_var)
  execute_process(COMMAND "${nvcc}" --version OUTPUT_VARIABLE _out ERROR_QUIET RESULT_VARIABLE _rc)
  if(_rc EQUAL 0 AND _out MATCHES "release ([0-9]+\\.[0-9]+)")
    set(${out_var} "${CMAKE_MATCH_1}" PARENT_SCOPE)
  else()
    set(${out_var} "" PARENT_SCOPE)
  endif()
endfunction()

# Sets FMICL_WITH_CUDA and FMICL_CUDA_WHY in the caller's scope; enables CUDA when usable.
# The arguments are the parts of one sentence (no semicolons in them).
macro(_fmicl_cuda_unusable)
  string(CONCAT FMICL_CUDA_WHY ${ARGV})
  if(FMICL_CUDA STREQUAL "ON")
    message(FATAL_ERROR "fmicl_engine: FMICL_CUDA=ON, but ${FMICL_CUDA_WHY}. Fix that, or build "
                        "without the CUDA kernels: FMICL_CUDA=OFF (or AUTO).")
  endif()
endmacro()

function(_fmicl_find_nvcc torch_major out_nvcc out_version out_seen)
  set(_candidates "")
  if(DEFINED CMAKE_CUDA_COMPILER AND CMAKE_CUDA_COMPILER)
    list(APPEND _candidates "${CMAKE_CUDA_COMPILER}")
  endif()
  if(DEFINED ENV{CUDACXX} AND NOT "$ENV{CUDACXX}" STREQUAL "")
    list(APPEND _candidates "$ENV{CUDACXX}")
  endif()
  foreach(_var CUDA_HOME CUDA_PATH)
    if(DEFINED ENV{${_var}} AND EXISTS "$ENV{${_var}}/bin/nvcc")
      list(APPEND _candidates "$ENV{${_var}}/bin/nvcc")
    endif()
  endforeach()
  find_program(_fmicl_path_nvcc nvcc NO_CACHE)
  if(_fmicl_path_nvcc)
    list(APPEND _candidates "${_fmicl_path_nvcc}")
  endif()
  if(EXISTS "/usr/local/cuda/bin/nvcc")
    list(APPEND _candidates "/usr/local/cuda/bin/nvcc")
  endif()
  list(REMOVE_DUPLICATES _candidates)
  set(_seen "")
  foreach(_nvcc IN LISTS _candidates)
    _fmicl_nvcc_version("${_nvcc}" _version)
    if(NOT _version)
      list(APPEND _seen "${_nvcc} (does not run)")
      continue()
    endif()
    list(APPEND _seen "${_nvcc} (CUDA ${_version})")
    string(REGEX MATCH "^[0-9]+" _major "${_version}")
    if(_major STREQUAL torch_major)
      set(${out_nvcc} "${_nvcc}" PARENT_SCOPE)
      set(${out_version} "${_version}" PARENT_SCOPE)
      set(${out_seen} "${_seen}" PARENT_SCOPE)
      return()
    endif()
  endforeach()
  set(${out_nvcc} "" PARENT_SCOPE)
  set(${out_version} "" PARENT_SCOPE)
  string(REPLACE ";" ", " _seen "${_seen}")
  set(${out_seen} "${_seen}" PARENT_SCOPE)
endfunction()

# TORCH_CUDA_ARCH_LIST ("8.0;9.0+PTX", "8.0 9.0") -> CMAKE_CUDA_ARCHITECTURES ("80-real;90").
function(_fmicl_arch_list_to_cmake text out_var)
  string(REPLACE " " ";" _items "${text}")
  set(_archs "")
  foreach(_item IN LISTS _items)
    if(_item MATCHES "^([0-9]+)\\.([0-9]+)[a-z]?(\\+PTX)?$")
      if(CMAKE_MATCH_3)
        list(APPEND _archs "${CMAKE_MATCH_1}${CMAKE_MATCH_2}")
      else()
        list(APPEND _archs "${CMAKE_MATCH_1}${CMAKE_MATCH_2}-real")
      endif()
    elseif(NOT _item STREQUAL "")
      message(FATAL_ERROR "fmicl_engine: cannot read TORCH_CUDA_ARCH_LIST entry '${_item}' "
                          "(expected e.g. 8.0;9.0+PTX)")
    endif()
  endforeach()
  set(${out_var} "${_archs}" PARENT_SCOPE)
endfunction()

if(FMICL_CUDA STREQUAL "OFF")
  set(FMICL_CUDA_WHY "opted out")
elseif(NOT TORCH_CUDA_VERSION)
  _fmicl_cuda_unusable("torch ${TORCH_VERSION} is a CPU-only build (torch.version.cuda is None)")
else()
  string(REGEX MATCH "^[0-9]+" _torch_cuda_major "${TORCH_CUDA_VERSION}")
  _fmicl_find_nvcc("${_torch_cuda_major}" _nvcc _nvcc_version _nvcc_seen)
  if(NOT _nvcc)
    if(_nvcc_seen)
      _fmicl_cuda_unusable("no CUDA ${_torch_cuda_major}.x compiler for torch's CUDA ${TORCH_CUDA_VERSION}, "
                           "found ${_nvcc_seen} (set CUDA_HOME or CUDACXX to a CUDA ${_torch_cuda_major} toolkit)")
    else()
      _fmicl_cuda_unusable("no CUDA compiler (nvcc) found for torch's CUDA ${TORCH_CUDA_VERSION} "
                           "(set CUDA_HOME or CUDACXX, or put nvcc on PATH)")
    endif()
  else()
    # Can it compile here (host compiler supported, headers present)? check_language runs a
    # throw-away project; enable_language would be a fatal error instead.
    # A compiler that passed before (FMICL_CUDA_CHECKED) is not checked again.
    if(NOT (DEFINED FMICL_CUDA_CHECKED AND FMICL_CUDA_CHECKED STREQUAL _nvcc
            AND CMAKE_CUDA_COMPILER STREQUAL _nvcc))
      include(CheckLanguage)
      set(_saved_cudacxx "$ENV{CUDACXX}")
      set(ENV{CUDACXX} "${_nvcc}")
      unset(CMAKE_CUDA_COMPILER CACHE)
      unset(CMAKE_CUDA_COMPILER)
      check_language(CUDA)
      set(ENV{CUDACXX} "${_saved_cudacxx}")
      if(CMAKE_CUDA_COMPILER)
        set(FMICL_CUDA_CHECKED "${_nvcc}" CACHE INTERNAL "the CUDA compiler check_language passed")
      else()
        unset(FMICL_CUDA_CHECKED CACHE)
      endif()
    endif()
    if(NOT CMAKE_CUDA_COMPILER)
      _fmicl_cuda_unusable("${_nvcc} (CUDA ${_nvcc_version}) cannot compile a test program here "
                           "(see CMakeFiles/CheckCUDA)")
    else()
      # Architectures: CMAKE_CUDA_ARCHITECTURES if given; else TORCH_CUDA_ARCH_LIST (as for
      # torch's own extensions); else this machine's GPU; else A100 and H100 (sm_80, sm_90, with
      # PTX that newer GPUs compile at load time). Must be set before enable_language.
      if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES OR CMAKE_CUDA_ARCHITECTURES STREQUAL "")
        if(DEFINED ENV{TORCH_CUDA_ARCH_LIST} AND NOT "$ENV{TORCH_CUDA_ARCH_LIST}" STREQUAL "")
          _fmicl_arch_list_to_cmake("$ENV{TORCH_CUDA_ARCH_LIST}" CMAKE_CUDA_ARCHITECTURES)
        else()
          execute_process(
            COMMAND "${Python_EXECUTABLE}" -c
              "import torch; print('%d%d' % torch.cuda.get_device_capability() if torch.cuda.is_available() else '')"
            OUTPUT_VARIABLE _gpu_arch OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
          if(_gpu_arch)
            set(CMAKE_CUDA_ARCHITECTURES "${_gpu_arch}")
          else()
            set(CMAKE_CUDA_ARCHITECTURES 80 90)
          endif()
        endif()
      endif()
      # torch links the shared CUDA runtime; a second, static one inside _C would not share its
      # state (CMake's default for the CUDA language is the static runtime).
      set(CMAKE_CUDA_RUNTIME_LIBRARY Shared)
      # CMake < 3.26 knows no nvcc flag for C++20, which torch >= 2.10 headers require.
      if(NOT DEFINED CMAKE_CUDA20_STANDARD_COMPILE_OPTION)
        set(CMAKE_CUDA20_STANDARD_COMPILE_OPTION "-std=c++20")
        set(CMAKE_CUDA20_EXTENSION_COMPILE_OPTION "-std=c++20")
      endif()
      enable_language(CUDA)
      set(CMAKE_CUDA_STANDARD 20)
      set(CMAKE_CUDA_STANDARD_REQUIRED ON)
      find_package(CUDAToolkit)
      # ATen/cuda/CUDAContext.h includes cublas_v2.h and cusparse.h. A slim toolkit lacks them;
      # torch's nvidia-* wheels carry them: nvidia/cu13/include (CUDA 13), or nvidia/cublas and
      # nvidia/cusparse (CUDA 12).
      set(_missing "")
      foreach(_header cublas_v2.h cusparse.h)
        set(_found "")
        foreach(_dir IN LISTS CUDAToolkit_INCLUDE_DIRS)
          if(EXISTS "${_dir}/${_header}")
            set(_found "${_dir}")
          endif()
        endforeach()
        if(NOT _found)
          list(APPEND _missing "${_header}")
        endif()
      endforeach()
      if(_missing)
        execute_process(
          COMMAND "${Python_EXECUTABLE}" -c [=[
import os, sys
try:
    import nvidia
except ImportError:
    sys.exit(0)
major, headers = sys.argv[1], sys.argv[2:]
roots = list(nvidia.__path__)
dirs = [os.path.join(r, f'cu{major}', 'include') for r in roots]
dirs += [os.path.join(r, lib, 'include') for r in roots for lib in ('cublas', 'cusparse', 'cuda_runtime')]
out = []
for h in headers:
    d = next((d for d in dirs if os.path.isfile(os.path.join(d, h))), None)
    if d is None:
        sys.exit(0)
    if d not in out:
        out.append(d)
print(';'.join(out))
]=] "${_torch_cuda_major}" ${_missing}
          OUTPUT_VARIABLE FMICL_CUDA_EXTRA_INCLUDES OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
      endif()
      if(NOT CUDAToolkit_FOUND)
        _fmicl_cuda_unusable("CMake's FindCUDAToolkit finds no toolkit for ${CMAKE_CUDA_COMPILER}")
      elseif(_missing AND NOT FMICL_CUDA_EXTRA_INCLUDES)
        string(REPLACE ";" ", " _missing "${_missing}")
        _fmicl_cuda_unusable("the CUDA toolkit at ${CUDAToolkit_BIN_DIR}/.. lacks ${_missing} "
                             "(needed by torch's CUDA headers) and no nvidia-* wheel provides them")
      else()
        set(FMICL_WITH_CUDA TRUE)
        string(REPLACE ";" " " _archs "${CMAKE_CUDA_ARCHITECTURES}")
        string(CONCAT FMICL_CUDA_WHY "nvcc ${CMAKE_CUDA_COMPILER_VERSION} (${CMAKE_CUDA_COMPILER}) matches "
                                     "torch's CUDA ${TORCH_CUDA_VERSION}, architectures ${_archs}")
      endif()
    endif()
  endif()
endif()
