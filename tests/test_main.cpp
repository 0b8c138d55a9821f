// Shared GoogleTest main: quiet logging and a fixed thread count so results are reproducible.
#include <gtest/gtest.h>
#include <spdlog/spdlog.h>

#include "common/host_memory.h"
#include "common/threads.h"

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  spdlog::set_level(spdlog::level::warn);
  qlora::configure_threads(2);
  qlora::configure_host_allocator();
  return RUN_ALL_TESTS();
}
