#include "trainer/dist/launch.h"

#include <netinet/in.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "common/error.h"

namespace qlora::dist {

namespace {

using Clock = std::chrono::steady_clock;
constexpr auto kPollInterval = std::chrono::milliseconds(50);
// After a rank fails, the others get this long to notice (their collective fails at once when the peer's
// connection closed) and exit with their own message, before they are killed.
constexpr auto kFailureGrace = std::chrono::seconds(10);
constexpr int kExitStopped = 130;

std::atomic<int> g_signals{0};
extern "C" void on_launcher_signal(int) {
  g_signals.fetch_add(1);
}

// A TCP port that is free now on the loopback interface (the kernel picks it).
int pick_free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw Error(std::string("--nproc: socket(): ") + std::strerror(errno));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    const std::string err = std::strerror(errno);
    ::close(fd);
    throw Error("--nproc: could not find a free port: " + err + "\nHINT: set MASTER_PORT");
  }
  ::close(fd);
  return ntohs(addr.sin_port);
}

std::string describe_status(int status) {
  if (WIFEXITED(status)) return "exited with code " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    const int sig = WTERMSIG(status);
    return "was killed by signal " + std::to_string(sig) + " (" + strsignal(sig) + ")";
  }
  return "ended with status " + std::to_string(status);
}

bool is_failure(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status) != 0 && WEXITSTATUS(status) != kExitStopped;
  return true;
}

// The ranks' command line: ours without --nproc N / --nproc=N.
std::vector<std::string> rank_arguments(const std::vector<std::string>& argv) {
  std::vector<std::string> args;
  for (size_t i = 0; i < argv.size(); ++i) {
    if (argv[i] == "--nproc") {
      ++i;
      continue;
    }
    if (argv[i].rfind("--nproc=", 0) == 0) continue;
    args.push_back(argv[i]);
  }
  return args;
}

// Forks rank `rank` of `nproc`: this executable again (/proc/self/exe) with `args` and torchrun's variables, in
// its own process group, so signals reach it only through the launcher.
pid_t start_rank(int rank, int nproc, const std::vector<std::string>& args, const std::string& addr, int port) {
  const pid_t pid = ::fork();
  if (pid < 0) throw Error(std::string("--nproc: fork(): ") + std::strerror(errno));
  if (pid > 0) return pid;
  ::setpgid(0, 0);
  std::signal(SIGINT, SIG_DFL);
  std::signal(SIGTERM, SIG_DFL);
  ::setenv("RANK", std::to_string(rank).c_str(), 1);
  ::setenv("LOCAL_RANK", std::to_string(rank).c_str(), 1);
  ::setenv("WORLD_SIZE", std::to_string(nproc).c_str(), 1);
  ::setenv("LOCAL_WORLD_SIZE", std::to_string(nproc).c_str(), 1);
  ::setenv("MASTER_ADDR", addr.c_str(), 1);
  ::setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
  std::vector<std::string> argv = args;
  std::vector<char*> cargs;
  for (auto& a : argv) cargs.push_back(a.data());
  cargs.push_back(nullptr);
  ::execv("/proc/self/exe", cargs.data());
  std::fprintf(stderr, "rank %d: exec /proc/self/exe failed: %s\n", rank, std::strerror(errno));
  ::_exit(127);
}

// Waits for every rank, forwarding the launcher's SIGINT/SIGTERM to them (the ranks agree on where to stop). After
// the first failure the others get kFailureGrace to exit by themselves, then are killed. Returns the exit code of
// launch_local_ranks.
int wait_for_ranks(std::vector<pid_t> pids) {
  const int nproc = static_cast<int>(pids.size());
  int alive = nproc, forwarded = 0, exit_code = 0, failed_rank = -1;
  bool kill_pending = false;
  Clock::time_point kill_at{};
  std::vector<int> statuses(nproc, 0);
  while (alive > 0) {
    int status = 0;
    const pid_t pid = ::waitpid(-1, &status, WNOHANG);
    const auto rank = std::find(pids.begin(), pids.end(), pid);
    if (pid > 0 && rank != pids.end()) {
      const int r = static_cast<int>(rank - pids.begin());
      *rank = -1;
      statuses[r] = status;
      --alive;
      if (is_failure(status)) {
        spdlog::error("rank {} {}", r, describe_status(status));
        if (failed_rank < 0) {
          failed_rank = r;
          exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 1;
          kill_pending = true;
          kill_at = Clock::now() + kFailureGrace;
        }
      }
      continue;
    }
    if (pid > 0) continue;  // not one of ours
    if (pid < 0 && errno != EINTR) break;
    for (const int n = g_signals.load(); forwarded < n; ++forwarded) {
      for (const pid_t p : pids) {
        if (p > 0) ::kill(p, SIGINT);
      }
    }
    if (kill_pending && Clock::now() >= kill_at) {
      for (int r = 0; r < nproc; ++r) {
        if (pids[r] <= 0) continue;
        spdlog::error("rank {} still running {} s after rank {} failed: killing it", r,
                      std::chrono::duration_cast<std::chrono::seconds>(kFailureGrace).count(), failed_rank);
        ::kill(pids[r], SIGKILL);
      }
      kill_pending = false;
    }
    std::this_thread::sleep_for(kPollInterval);
  }
  if (failed_rank >= 0) {
    spdlog::error(
        "rank {} failed: the job stopped (exit code {}); run the same command again to resume from the "
        "last checkpoint",
        failed_rank, exit_code);
    return exit_code == 0 ? 1 : exit_code;
  }
  for (const int status : statuses) {
    if (WIFEXITED(status) && WEXITSTATUS(status) == kExitStopped) return kExitStopped;
  }
  return 0;
}

}  // namespace

int launch_local_ranks(int nproc, const std::vector<std::string>& argv) {
  if (nproc < 1) throw Error("--nproc " + std::to_string(nproc) + ": must be >= 1");
  if (std::getenv("RANK") || std::getenv("WORLD_SIZE")) {
    throw Error(
        "--nproc inside a distributed launch (RANK/WORLD_SIZE are set)\nHINT: drop --nproc when torchrun "
        "or another launcher starts the ranks");
  }
  const std::vector<std::string> args = rank_arguments(argv);
  const std::string addr = std::getenv("MASTER_ADDR") ? std::getenv("MASTER_ADDR") : "127.0.0.1";
  const int port = std::getenv("MASTER_PORT") ? std::atoi(std::getenv("MASTER_PORT")) : pick_free_port();
  spdlog::info("launching {} ranks on this machine (rendezvous at {}:{})", nproc, addr, port);

  std::signal(SIGINT, on_launcher_signal);
  std::signal(SIGTERM, on_launcher_signal);
  std::vector<pid_t> pids;
  for (int r = 0; r < nproc; ++r) pids.push_back(start_rank(r, nproc, args, addr, port));
  const int exit_code = wait_for_ranks(std::move(pids));
  std::signal(SIGINT, SIG_DFL);
  std::signal(SIGTERM, SIG_DFL);
  return exit_code;
}

}  // namespace qlora::dist
