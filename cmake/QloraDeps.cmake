# The C++ libraries besides LibTorch. Two sources:
#  - the system's (Debian packages, scripts/install-deps.sh): the normal case;
#  - a bundle folder (-DQLORA_BUNDLE_DIR=DIR, made by scripts/gpu-bundle.sh from those same Debian packages) for a
#    machine that has a compiler, CMake, CUDA and PyTorch but not our packages and no network (the GPU machine of
#    scripts/gpu-check.sh): headers, the static yaml-cpp and PCRE2 archives, spdlog + fmt header-only, GoogleTest's
#    sources.
set(QLORA_BUNDLE_DIR "" CACHE PATH "Folder made by scripts/gpu-bundle.sh (instead of the system's libraries)")
find_package(Threads REQUIRED)

if(NOT QLORA_BUNDLE_DIR)
  find_package(yaml-cpp REQUIRED)
  find_package(spdlog REQUIRED)
  find_package(nlohmann_json 3.9 REQUIRED)
  find_package(CLI11 REQUIRED)
  find_package(PkgConfig REQUIRED)
  pkg_check_modules(PCRE2 REQUIRED IMPORTED_TARGET libpcre2-8)
  return()
endif()

set(b ${QLORA_BUNDLE_DIR})
if(NOT EXISTS ${b}/include/yaml-cpp/yaml.h)
  message(FATAL_ERROR "QLORA_BUNDLE_DIR=${b} is not a bundle (no include/yaml-cpp)\nHINT: make it with "
                      "scripts/gpu-bundle.sh DIR on a machine where `make deps` ran")
endif()
message(STATUS "C++ dependencies from the bundle ${b}")

add_library(yaml-cpp STATIC IMPORTED GLOBAL)
set_target_properties(yaml-cpp PROPERTIES IMPORTED_LOCATION ${b}/lib/libyaml-cpp.a
                                          INTERFACE_INCLUDE_DIRECTORIES ${b}/include)

# spdlog and fmt header-only: no shared library to carry, and no clash with LibTorch's own fmt (hidden inside it).
add_library(spdlog::spdlog INTERFACE IMPORTED GLOBAL)
set_target_properties(spdlog::spdlog PROPERTIES INTERFACE_INCLUDE_DIRECTORIES ${b}/include
    INTERFACE_COMPILE_DEFINITIONS "SPDLOG_HEADER_ONLY;SPDLOG_FMT_EXTERNAL;FMT_HEADER_ONLY")

add_library(nlohmann_json::nlohmann_json INTERFACE IMPORTED GLOBAL)
set_target_properties(nlohmann_json::nlohmann_json PROPERTIES INTERFACE_INCLUDE_DIRECTORIES ${b}/include)
add_library(CLI11::CLI11 INTERFACE IMPORTED GLOBAL)
set_target_properties(CLI11::CLI11 PROPERTIES INTERFACE_INCLUDE_DIRECTORIES ${b}/include)

add_library(PkgConfig::PCRE2 STATIC IMPORTED GLOBAL)
set_target_properties(PkgConfig::PCRE2 PROPERTIES IMPORTED_LOCATION ${b}/lib/libpcre2-8.a
    INTERFACE_INCLUDE_DIRECTORIES ${b}/include INTERFACE_COMPILE_DEFINITIONS PCRE2_STATIC)

# GoogleTest from its sources (Debian's googletest package), built here.
set(QLORA_BUNDLE_GTEST_SRC ${b}/src/googletest)
