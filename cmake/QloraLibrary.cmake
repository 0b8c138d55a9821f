# qlora_add_library(NAME folder DEPS ...): one static library per folder from its *.cpp files.
# Sources are globbed (CONFIGURE_DEPENDS) so adding a file pair needs no CMake edit.
function(qlora_add_library name)
  cmake_parse_arguments(ARG "" "" "DEPS" ${ARGN})
  file(GLOB srcs CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/*.cpp)
  if(QLORA_CUDA)
    # CUDA kernels include no LibTorch header (they take raw pointers and a stream), so no precompiled header.
    file(GLOB cu_srcs CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/*.cu)
    set_source_files_properties(${cu_srcs} PROPERTIES SKIP_PRECOMPILE_HEADERS ON)
    list(APPEND srcs ${cu_srcs})
  endif()
  if(srcs)
    add_library(${name} STATIC ${srcs})
    target_link_libraries(${name} PUBLIC qlora_base ${ARG_DEPS})
    qlora_use_pch(${name})
  else()
    add_library(${name} INTERFACE)
    target_link_libraries(${name} INTERFACE qlora_base ${ARG_DEPS})
  endif()
endfunction()

# All targets share one precompiled <torch/torch.h> (LibTorch headers dominate compile time).
function(qlora_use_pch target)
  if(QLORA_PCH)
    target_precompile_headers(${target} REUSE_FROM qlora_pch)
  endif()
endfunction()
