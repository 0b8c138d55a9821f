#include "trainer/dist/distributed.h"

// ProcessGroupGloo.hpp declares the class only when LibTorch was built with Gloo (it says so with this macro).
#ifndef USE_C10D_GLOO
#define USE_C10D_GLOO
#endif

#include <spdlog/spdlog.h>

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef USE_C10D_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <thread>

#include "common/error.h"

namespace qlora::dist {

namespace {

// LibTorch splits a process group into a dispatching c10d::ProcessGroup and per-device c10d::Backends; the Gloo
// and NCCL classes are Backends, with the collective methods we use.
using PgBase = c10d::Backend;

constexpr auto kHeartbeatInterval = std::chrono::milliseconds(500);
// A heartbeat that did not move in this long belongs to a dead or stopped process.
constexpr auto kHeartbeatStale = 4 * kHeartbeatInterval;
constexpr auto kDiagnoseStoreTimeout = std::chrono::seconds(5);
// Starting the ranks (loading LibTorch, the config, connecting every pair) takes seconds: the rendezvous waits at
// least this long, whatever dist.timeout_s says (which then applies to each collective).
constexpr auto kMinRendezvousTimeout = std::chrono::milliseconds(300000);
constexpr const char* kKeyPrefix = "qlora/";

// Built with append: GCC 12's C++20 `std::string + "literal"` inlining reports a false -Warray-bounds at -O3.
std::string heartbeat_key(int rank) {
  return std::string(kKeyPrefix).append("heartbeat/").append(std::to_string(rank));
}
std::string failed_key(int rank) {
  return std::string(kKeyPrefix).append("failed/").append(std::to_string(rank));
}

int env_int(const char* name, int def, int min, int max) {
  const char* v = std::getenv(name);
  if (!v || !*v) return def;
  char* end = nullptr;
  const long x = std::strtol(v, &end, 10);
  if (*end != '\0' || x < min || x > max) {
    throw Error(std::string("environment variable ") + name + "=" + v + ": expected an integer in [" +
                std::to_string(min) + ", " + std::to_string(max) +
                "]\nHINT: launch with `qlora-train cfg.yaml "
                "--nproc N`, or set RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT as torchrun does");
  }
  return static_cast<int>(x);
}

// No store connection waits for the others (TCPStoreOptions::waitWorkers = false): the process group's full-mesh
// connect is the rendezvous, waiting (up to the rendezvous timeout) for every rank's address in the store.
// The store's listening socket on rank 0, bound to the address MASTER_ADDR names (loopback for local runs) and never
// to every interface, which is what TCPStore's own server would do: the store is unauthenticated (as torchrun's), so
// it must only be reachable where the ranks are.
int listen_on_master_addr(const DistEnv& env) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* res = nullptr;
  const std::string port = std::to_string(env.master_port);
  if (const int rc = ::getaddrinfo(env.master_addr.c_str(), port.c_str(), &hints, &res); rc != 0) {
    throw Error("MASTER_ADDR " + env.master_addr + ": cannot resolve (" + ::gai_strerror(rc) +
                ")\nHINT: set MASTER_ADDR to this machine's address on the network the ranks share");
  }
  std::string why = "no address";
  for (addrinfo* a = res; a != nullptr; a = a->ai_next) {
    const int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) continue;
    const int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (::bind(fd, a->ai_addr, a->ai_addrlen) == 0 && ::listen(fd, SOMAXCONN) == 0) {
      ::freeaddrinfo(res);
      return fd;
    }
    why = std::strerror(errno);
    ::close(fd);
  }
  ::freeaddrinfo(res);
  throw Error("cannot listen on MASTER_ADDR:MASTER_PORT " + env.master_addr + ":" + port + " (" + why +
              ")\nHINT: MASTER_ADDR must be an address of rank 0's machine, and MASTER_PORT free there");
}

c10::intrusive_ptr<c10d::TCPStore> connect_store(const DistEnv& env, bool server, std::chrono::milliseconds timeout) {
  c10d::TCPStoreOptions so;
  so.port = static_cast<std::uint16_t>(env.master_port);
  so.isServer = server;
  if (server) so.masterListenFd = listen_on_master_addr(env);
  so.numWorkers = server ? c10::optional<std::size_t>(env.world_size) : c10::nullopt;
  so.waitWorkers = false;
  so.timeout = timeout;
  return c10::make_intrusive<c10d::TCPStore>(env.master_addr, so);
}

std::string to_string(const std::vector<uint8_t>& v) {
  return std::string(v.begin(), v.end());
}
std::vector<uint8_t> to_bytes(const std::string& s) {
  return std::vector<uint8_t>(s.begin(), s.end());
}

}  // namespace

DistEnv dist_env_from_environment() {
  DistEnv env;
  env.world_size = env_int("WORLD_SIZE", 1, 1, 1 << 20);
  env.rank = env_int("RANK", 0, 0, env.world_size - 1);
  env.local_rank = env_int("LOCAL_RANK", env.rank, 0, env.world_size - 1);
  if (const char* a = std::getenv("MASTER_ADDR"); a && *a) env.master_addr = a;
  env.master_port = env_int("MASTER_PORT", 29500, 1, 65535);
  if (env.world_size > 1 && !std::getenv("RANK")) {
    throw Error("environment: WORLD_SIZE=" + std::to_string(env.world_size) +
                " but RANK is not set\nHINT: set RANK "
                "(0..WORLD_SIZE-1) for every process, or launch with `qlora-train cfg.yaml --nproc N`");
  }
  return env;
}

// ---------------------------------------------------------------------------------------------------------------
// DistGroup

struct DistGroup::Impl {
  c10::intrusive_ptr<c10d::TCPStore> store;  // rank 0: also the server
  c10::intrusive_ptr<c10d::Store> prefixed;  // what the process group uses
  c10::intrusive_ptr<PgBase> pg;
  std::vector<c10::intrusive_ptr<c10d::Work>> pending;

  // Heartbeat thread with its own store connection (a TCPStore client is not shared between threads).
  std::thread heartbeat;
  std::mutex hb_mutex;
  std::condition_variable hb_cv;
  bool hb_stop = false;
  bool store_lost = false;  // a heartbeat failed: the store (rank 0's process) is gone
};

DistGroup::DistGroup(const DistEnv& env, const DistOptions& options)
    : env_(env), options_(options), impl_(std::make_unique<Impl>()) {
  auto& I = *impl_;
  // A write to a dead peer's socket must be an error c10d reports (and diagnose_failure explains), not a SIGPIPE
  // that kills this rank silently: seen when rank 0 was SIGKILLed mid-checkpoint. Python, which torchrun's ranks
  // normally run in, ignores SIGPIPE from startup; so do we once a process joins a group.
  std::signal(SIGPIPE, SIG_IGN);
  const std::string where = env.master_addr + ":" + std::to_string(env.master_port);
  const auto rendezvous_timeout = std::max(options.timeout, kMinRendezvousTimeout);
  try {
    I.store = connect_store(env, env.rank == 0, rendezvous_timeout);
  } catch (const std::exception& e) {
    throw Error("distributed rendezvous at " + where + " (rank " + std::to_string(env.rank) + " of " +
                std::to_string(env.world_size) + ") failed: " + e.what() + "\nHINT: every rank must start within " +
                std::to_string(rendezvous_timeout.count() / 1000) +
                " s of each other; MASTER_ADDR:MASTER_PORT must be reachable from "
                "every rank and free on rank 0's machine (set another MASTER_PORT)");
  }
  I.prefixed = c10::make_intrusive<c10d::PrefixStore>("qlora/pg", I.store);
  try {
    if (options.backend == "gloo") {
      auto go = c10d::ProcessGroupGloo::Options::create(rendezvous_timeout);
      // Bind to the address the store is reachable on: loopback for local runs, the interface of MASTER_ADDR's
      // network otherwise (Gloo resolves the hostname of this machine).
      const bool loopback = env.master_addr == "127.0.0.1" || env.master_addr == "localhost";
      go->devices.push_back(loopback ? c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1")
                                     : c10d::ProcessGroupGloo::createDefaultDevice());
      I.pg = c10::make_intrusive<c10d::ProcessGroupGloo>(I.prefixed, env.rank, env.world_size, go);
    } else if (options.backend == "nccl") {
#ifdef USE_C10D_NCCL
      auto no = c10d::ProcessGroupNCCL::Options::create();
      no->timeout = options.timeout;
      I.pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(I.prefixed, env.rank, env.world_size, no);
#else
      throw Error(
          "dist.backend: nccl: this LibTorch build has no NCCL (a CPU-only build)\nHINT: use dist.backend: "
          "gloo, or build against a CUDA-enabled LibTorch");
#endif
    } else {
      throw Error("dist.backend: unknown backend `" + options.backend + "`\nHINT: use gloo or nccl");
    }
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    throw Error("distributed rendezvous at " + where + ": the " + options.backend + " process group of rank " +
                std::to_string(env.rank) + " could not connect to all " + std::to_string(env.world_size) +
                " ranks within " + std::to_string(rendezvous_timeout.count() / 1000) + " s: " + e.what());
  }

  // Heartbeat: bump our key every kHeartbeatInterval until destroyed. The bump runs unlocked (it may block on a
  // stopped rank 0), so diagnose_failure can always wait on hb_cv.
  auto hb_store = connect_store(env, /*server=*/false, rendezvous_timeout);
  I.heartbeat = std::thread([this, hb_store]() {
    auto& J = *impl_;
    std::unique_lock<std::mutex> lock(J.hb_mutex);
    while (!J.hb_stop) {
      lock.unlock();
      bool sent = true;
      try {
        hb_store->add(heartbeat_key(env_.rank), 1);
      } catch (const std::exception&) {
        sent = false;  // the connection failed: rank 0, which hosts the store, ended
      }
      lock.lock();
      if (!sent) {
        J.store_lost = true;
        J.hb_cv.notify_all();
        return;
      }
      J.hb_cv.wait_for(lock, kHeartbeatInterval, [&J] { return J.hb_stop; });
    }
  });
  spdlog::info("distributed: rank {} of {} joined the {} group at {}", env.rank, env.world_size, options.backend,
               where);
}

DistGroup::~DistGroup() {
  auto& I = *impl_;
  // Leaving by an exception: say so, so the other ranks can name us instead of waiting for a timeout.
  if (std::uncaught_exceptions() > 0) {
    try {
      I.store->set(failed_key(env_.rank), to_bytes("1"));
    } catch (const std::exception&) {
    }
  }
  {
    std::lock_guard<std::mutex> lock(I.hb_mutex);
    I.hb_stop = true;
  }
  I.hb_cv.notify_all();
  if (I.heartbeat.joinable()) I.heartbeat.join();
}

std::string DistGroup::diagnose_failure() {
  const std::string rank0_gone = "rank 0 stopped responding (the rendezvous store it hosts at " + env_.master_addr +
                                 ":" + std::to_string(env_.master_port) +
                                 " is unreachable: rank 0 died or was stopped)";
  if (env_.rank != 0) {
    // A dead rank 0 closes the heartbeat's open store connection: its next bump fails at once. Ask it first: c10d
    // retries a new connection to a dead store (a refused connection looks like a store not up yet) for
    // kDiagnoseStoreTimeout and again after a back-off (measured 5 s + 5.8 s), past the 10 s the --nproc launcher
    // gives the other ranks to exit before it kills them (trainer/dist/launch.h).
    std::unique_lock<std::mutex> lock(impl_->hb_mutex);
    if (impl_->hb_cv.wait_for(lock, 2 * kHeartbeatInterval, [this] { return impl_->store_lost; })) return rank0_gone;
  }
  const int W = env_.world_size;
  c10::intrusive_ptr<c10d::TCPStore> store;
  std::vector<int64_t> before(W), after(W);
  std::vector<bool> failed(W);
  try {
    store = connect_store(env_, /*server=*/false, kDiagnoseStoreTimeout);
    for (int r = 0; r < W; ++r) before[r] = store->add(heartbeat_key(r), 0);
    std::this_thread::sleep_for(kHeartbeatStale);
    for (int r = 0; r < W; ++r) {
      after[r] = store->add(heartbeat_key(r), 0);
      failed[r] = store->check({failed_key(r)});
    }
  } catch (const std::exception&) {
    return env_.rank != 0 ? rank0_gone : "the rendezvous store is unreachable";
  }
  std::string failed_ranks, silent_ranks;
  for (int r = 0; r < W; ++r) {
    if (r == env_.rank) continue;
    if (failed[r]) {
      failed_ranks += (failed_ranks.empty() ? "" : ", ") + std::to_string(r);
    } else if (after[r] == before[r]) {
      silent_ranks += (silent_ranks.empty() ? "" : ", ") + std::to_string(r);
    }
  }
  std::string msg;
  if (!failed_ranks.empty()) msg += "rank " + failed_ranks + " failed with an error (see its log)";
  if (!silent_ranks.empty()) {
    msg += std::string(msg.empty() ? "" : "; ") + "rank " + silent_ranks + " stopped responding (no heartbeat for " +
           std::to_string(kHeartbeatStale.count()) + " ms: the process died or is stopped)";
  }
  if (msg.empty()) {
    msg = "every other rank is alive: one is slower than dist.timeout_s (" +
          std::to_string(options_.timeout.count() / 1000.0) + " s) or the ranks disagree on the order of collectives";
  }
  return msg;
}

void DistGroup::fail(const std::string& what, const std::exception& e) {
  impl_->pending.clear();
  // The group is unusable now. Leak it rather than destroy it: its destructor joins worker threads that may still
  // be blocked on the dead peer's queued operations, which would delay the exit by a timeout per operation.
  (void)impl_->pg.release();
  std::string cause = e.what();
  if (const auto nl = cause.find('\n'); nl != std::string::npos) cause.resize(nl);  // drop c10's backtrace
  throw Error("distributed " + what + " failed on rank " + std::to_string(env_.rank) + ": " + diagnose_failure() +
              " [" + options_.backend + ": " + cause +
              "]\nHINT: every rank stops; fix or restart the failed rank's "
              "machine, then run the same command again: checkpoint.resume: auto continues from the last checkpoint");
}

void DistGroup::all_reduce_sum(const std::vector<torch::Tensor>& tensors, const std::string& what) {
  std::vector<at::Tensor> ts(tensors.begin(), tensors.end());
  c10d::AllreduceOptions ao;
  ao.timeout = options_.timeout;
  try {
    impl_->pg->allreduce(ts, ao)->wait(options_.timeout);
  } catch (const std::exception& e) {
    fail(what, e);
  }
}

void DistGroup::broadcast(const std::vector<torch::Tensor>& tensors, int root, const std::string& what) {
  std::vector<at::Tensor> ts(tensors.begin(), tensors.end());
  c10d::BroadcastOptions bo;
  bo.rootRank = root;
  bo.timeout = options_.timeout;
  try {
    for (auto& t : ts) {
      std::vector<at::Tensor> one{t};
      impl_->pg->broadcast(one, bo)->wait(options_.timeout);
    }
  } catch (const std::exception& e) {
    fail(what, e);
  }
}

void DistGroup::all_reduce_sum_async(const torch::Tensor& tensor) {
  std::vector<at::Tensor> ts{tensor};
  c10d::AllreduceOptions ao;
  ao.timeout = options_.timeout;
  impl_->pending.push_back(impl_->pg->allreduce(ts, ao));
}

void DistGroup::wait_all(const std::string& what) {
  try {
    for (auto& w : impl_->pending) w->wait(options_.timeout);
  } catch (const std::exception& e) {
    fail(what, e);
  }
  impl_->pending.clear();
}

std::string DistGroup::share_from_rank0(const std::string& key, const std::string& value_on_rank0) {
  const std::string k = std::string(kKeyPrefix) + "shared/" + key;
  try {
    if (env_.rank == 0) {
      impl_->store->set(k, to_bytes(value_on_rank0));
      return value_on_rank0;
    }
    return to_string(impl_->store->get(k));  // waits up to the store timeout
  } catch (const std::exception& e) {
    fail("exchange of `" + key + "`", e);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// GradientReducer

GradientReducer::GradientReducer(DistGroup& group, std::vector<torch::Tensor> params, double bucket_mb)
    : group_(group), params_(std::move(params)) {
  const int64_t bucket_elems = std::max<int64_t>(1, static_cast<int64_t>(bucket_mb * 1024 * 1024 / sizeof(float)));
  bucket_of_.resize(params_.size());
  slot_of_.resize(params_.size());
  done_.assign(params_.size(), false);
  // The backward pass produces the gradients of the last layers first: bucket in reverse parameter order so
  // the first bucket fills first.
  std::vector<Bucket> buckets;
  int64_t filled = 0;
  for (size_t k = params_.size(); k-- > 0;) {
    const auto& p = params_[k];
    TORCH_CHECK(c10::isFloatingType(p.scalar_type()), "GradientReducer: parameter ", k, " is ", p.scalar_type());
    if (buckets.empty() || (filled > 0 && filled + p.numel() > bucket_elems)) {
      buckets.emplace_back();
      filled = 0;
    }
    auto& b = buckets.back();
    bucket_of_[k] = buckets.size() - 1;
    slot_of_[k] = b.params.size();
    b.params.push_back(k);
    b.offsets.push_back(filled);
    filled += p.numel();
    num_elements_ += p.numel();
  }
  for (auto& b : buckets) {
    const int64_t n = b.offsets.back() + params_[b.params.back()].numel();
    b.flat = torch::zeros({n}, params_[b.params.front()].options().dtype(torch::kFloat));
  }
  buckets_ = std::move(buckets);
  for (size_t k = 0; k < params_.size(); ++k) {
    hook_ids_.push_back(params_[k].register_hook([this, k](const torch::Tensor& grad) { on_grad(k, grad); }));
  }
  spdlog::info("distributed: {} adapter gradient elements ({:.2f} MB) in {} buckets of <= {} MB", num_elements_,
               static_cast<double>(num_elements_ * sizeof(float)) / 1e6, buckets_.size(), bucket_mb);
}

GradientReducer::~GradientReducer() {
  for (size_t k = 0; k < params_.size() && k < hook_ids_.size(); ++k) params_[k].remove_hook(hook_ids_[k]);
}

void GradientReducer::arm() {
  std::lock_guard<std::mutex> lock(mutex_);
  for (auto& b : buckets_) {
    b.pending = b.params.size();
    b.launched = false;
  }
  std::fill(done_.begin(), done_.end(), false);
  next_launch_ = 0;
  armed_ = true;
}

// A tensor hook runs before the gradient is accumulated into param.grad(): the final gradient of this update is
// what was accumulated so far (earlier micro-batches) plus this one.
void GradientReducer::on_grad(size_t k, const torch::Tensor& grad) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!armed_ || done_[k]) return;
  auto& b = buckets_[bucket_of_[k]];
  const auto& p = params_[k];
  const int64_t off = b.offsets[slot_of_[k]];
  auto slot = b.flat.narrow(0, off, p.numel()).view_as(p);
  torch::NoGradGuard no_grad;
  const auto& prev = p.grad();
  if (prev.defined()) {
    slot.copy_(prev + grad);
  } else {
    slot.copy_(grad);
  }
  done_[k] = true;
  --b.pending;
  launch_ready();
}

void GradientReducer::launch_ready() {
  while (next_launch_ < buckets_.size() && buckets_[next_launch_].pending == 0) {
    auto& b = buckets_[next_launch_];
    b.launched = true;
    group_.all_reduce_sum_async(b.flat);
    ++next_launch_;
  }
}

void GradientReducer::fill_from_grads(Bucket& b) {
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < b.params.size(); ++i) {
    const size_t k = b.params[i];
    if (done_[k]) continue;
    const auto& p = params_[k];
    auto slot = b.flat.narrow(0, b.offsets[i], p.numel()).view_as(p);
    if (p.grad().defined()) {
      slot.copy_(p.grad());
    } else {
      slot.zero_();
    }
    done_[k] = true;
  }
  b.pending = 0;
}

double GradientReducer::finish(const std::string& what) {
  const auto t0 = std::chrono::steady_clock::now();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!armed_) {  // no backward on this rank this update: contribute what param.grad() holds (or zeros)
      std::fill(done_.begin(), done_.end(), false);
      next_launch_ = 0;
      for (auto& b : buckets_) b.launched = false;
    }
    for (size_t i = next_launch_; i < buckets_.size(); ++i) fill_from_grads(buckets_[i]);
    launch_ready();
    armed_ = false;
  }
  group_.wait_all(what);
  torch::NoGradGuard no_grad;
  for (auto& b : buckets_) {
    for (size_t i = 0; i < b.params.size(); ++i) {
      auto& p = params_[b.params[i]];
      auto sum = b.flat.narrow(0, b.offsets[i], p.numel()).view_as(p);
      if (p.mutable_grad().defined()) {
        p.mutable_grad().copy_(sum);
      } else {
        p.mutable_grad() = sum.clone();
      }
    }
  }
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace qlora::dist
