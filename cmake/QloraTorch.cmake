# Finds LibTorch 2.x: the one inside the torch wheel of QLORA_TORCH_PYTHON (default: the project's .venv, made by
# scripts/install-deps.sh), unless Torch_DIR is given. A GPU machine passes its own PyTorch's python.
if(EXISTS ${CMAKE_SOURCE_DIR}/.venv/bin/python)
  set(qlora_default_python ${CMAKE_SOURCE_DIR}/.venv/bin/python)
else()
  set(qlora_default_python python3)
endif()
set(QLORA_TORCH_PYTHON ${qlora_default_python} CACHE FILEPATH "Python whose torch wheel provides LibTorch")

if(NOT Torch_DIR)
  execute_process(
    COMMAND ${QLORA_TORCH_PYTHON} -c "import os, torch; print(os.path.dirname(torch.__file__))"
    OUTPUT_VARIABLE qlora_torch_root OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${QLORA_TORCH_PYTHON} cannot import torch.\nHINT: run `make deps` (scripts/install-deps.sh "
                        "makes .venv from requirements/), or pass -DQLORA_TORCH_PYTHON=/path/to/python with torch 2.x")
  endif()
  set(Torch_DIR ${qlora_torch_root}/share/cmake/Torch CACHE PATH "LibTorch's CMake config" FORCE)
endif()
get_filename_component(QLORA_TORCH_ROOT ${Torch_DIR}/../../.. ABSOLUTE)
# Libraries first from the wheel (a system LibTorch, e.g. Debian's libtorch-dev, must not be picked up).
list(PREPEND CMAKE_PREFIX_PATH ${QLORA_TORCH_ROOT})

if(QLORA_CUDA)
  # LibTorch's CUDA CMake takes the target architectures from TORCH_CUDA_ARCH_LIST (Ampere to Blackwell by default).
  if(NOT DEFINED ENV{TORCH_CUDA_ARCH_LIST} AND NOT TORCH_CUDA_ARCH_LIST)
    set(TORCH_CUDA_ARCH_LIST "8.0;8.6;8.9;9.0;12.0")
  endif()
  enable_language(CUDA)
  # Our kernels use the CUDA runtime LibTorch loads (the wheel's libcudart, below), not a second, static one.
  set(CMAKE_CUDA_RUNTIME_LIBRARY None)
  set(CMAKE_CUDA_STANDARD 20)
  set(CMAKE_CUDA_STANDARD_REQUIRED ON)
endif()

find_package(Torch REQUIRED)
if(Torch_VERSION VERSION_LESS 2.0)
  message(FATAL_ERROR "LibTorch ${Torch_VERSION} at ${Torch_DIR}: qlora.cpp needs LibTorch 2.x (the torch wheel)")
endif()
if(QLORA_CUDA AND NOT TORCH_CUDA_LIBRARIES)
  message(FATAL_ERROR "QLORA_CUDA=ON but the LibTorch at ${Torch_DIR} has no CUDA\nHINT: use the CUDA torch wheel "
                      "or -DQLORA_CUDA=OFF")
endif()

# The wheel's libtorch_cuda.so needs NCCL, cuBLAS, cuDNN... from the nvidia-* wheels beside it (its RPATH says
# $ORIGIN/../../nvidia/*/lib). The runtime loader follows that; the link-time one must be told, or it takes an older
# system copy (e.g. the CUDA toolkit's libnccl) and fails on missing symbols.
file(GLOB qlora_nvidia_libdirs LIST_DIRECTORIES true ${QLORA_TORCH_ROOT}/../nvidia/*/lib)
foreach(dir ${qlora_nvidia_libdirs})
  add_link_options(LINKER:-rpath-link,${dir})
endforeach()
# LibTorch's CMake takes the CUDA runtime and NVRTC of the local toolkit (e.g. 13.0 in /usr/local/cuda), while the
# wheel runs with its own newer ones (nvidia-cuda-runtime, same soname): link and RPATH the wheel's, so the process
# loads one CUDA runtime, the one LibTorch was built for.
foreach(pair "CUDA::cudart;libcudart.so.*" "CUDA::nvrtc;libnvrtc.so.*")
  list(GET pair 0 target)
  list(GET pair 1 pattern)
  file(GLOB wheel_lib ${QLORA_TORCH_ROOT}/../nvidia/*/lib/${pattern})
  list(FILTER wheel_lib EXCLUDE REGEX "builtins|alt")
  if(TARGET ${target} AND wheel_lib)
    list(GET wheel_lib 0 wheel_lib)
    set_target_properties(${target} PROPERTIES IMPORTED_LOCATION ${wheel_lib})
    message(STATUS "${target}: ${wheel_lib} (the torch wheel's)")
  endif()
endforeach()
# TorchConfig also lists the toolkit's NVRTC by path.
file(GLOB qlora_wheel_nvrtc ${QLORA_TORCH_ROOT}/../nvidia/*/lib/libnvrtc.so.*)
list(FILTER qlora_wheel_nvrtc EXCLUDE REGEX "builtins|alt")
if(qlora_wheel_nvrtc)
  list(GET qlora_wheel_nvrtc 0 qlora_wheel_nvrtc)
  list(TRANSFORM TORCH_LIBRARIES REPLACE ".*/libnvrtc\\.so$" "${qlora_wheel_nvrtc}")
endif()

# The wheel's include/ carries its own fmt 12 headers, which would shadow the system fmt that spdlog is built with
# (Debian's spdlog 1.10 needs fmt 9 and does not compile against 12). Our targets see LibTorch's headers through a
# folder of links to every entry of include/ but fmt; LibTorch's own fmt stays inside its libraries.
set(qlora_torch_include ${CMAKE_BINARY_DIR}/torch-include)
file(MAKE_DIRECTORY ${qlora_torch_include})
file(GLOB qlora_torch_entries RELATIVE ${QLORA_TORCH_ROOT}/include ${QLORA_TORCH_ROOT}/include/*)
foreach(entry ${qlora_torch_entries})
  if(NOT entry STREQUAL "fmt")
    file(CREATE_LINK ${QLORA_TORCH_ROOT}/include/${entry} ${qlora_torch_include}/${entry} SYMBOLIC)
  endif()
endforeach()
list(TRANSFORM TORCH_INCLUDE_DIRS REPLACE "^${QLORA_TORCH_ROOT}/include" "${qlora_torch_include}")
foreach(target torch torch_cpu torch_cuda c10 c10_cuda torch_library)
  if(TARGET ${target})
    get_target_property(dirs ${target} INTERFACE_INCLUDE_DIRECTORIES)
    if(dirs)
      list(TRANSFORM dirs REPLACE "^${QLORA_TORCH_ROOT}/include" "${qlora_torch_include}")
      set_target_properties(${target} PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${dirs}")
    endif()
  endif()
endforeach()

message(STATUS "LibTorch ${Torch_VERSION} from ${QLORA_TORCH_ROOT} (CUDA build: ${QLORA_CUDA})")
