// The exit-code contract every qlora-<verb> main follows:
//   0 success, 2 user error (bad flag, config, input file) with one clear message on stderr,
//   1 internal error, 130 after a clean stop on SIGINT/SIGTERM.
#pragma once

#include <c10/util/Exception.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>
#include <functional>

#include "common/error.h"
#include "common/host_memory.h"
#include "common/log.h"
#include "common/threads.h"

namespace qlora::app {

// Parses argv, initialises logging and stop handlers, runs `body`, and maps exceptions to exit codes.
inline int run(CLI::App& cli, int argc, char** argv, const std::function<int()>& body) {
  try {
    cli.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    std::printf("%s", cli.help().c_str());
    return 0;
  } catch (const CLI::CallForVersion&) {
    std::printf("qlora.cpp 0.1.0\n");
    return 0;
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "error: %s\nRun with --help for usage.\n", e.what());
    return 2;
  }
  init_logging();
  configure_host_allocator();
  install_stop_handlers();
  try {
    return body();
  } catch (const Interrupted& e) {
    spdlog::warn("stopped: {}", e.what());
    return 130;
  } catch (const Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "internal error: %s\n", e.what_without_backtrace());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "internal error: %s\n", e.what());
    return 1;
  }
}

}  // namespace qlora::app
