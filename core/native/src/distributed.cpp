// Process groups over libtorch's c10d (the engine PyTorch's torch.distributed and DDP run on): a TCPStore
// rendezvous (rank 0 hosts it), a PrefixStore per group, ProcessGroupGloo for CPU tensors and — in a CUDA
// libtorch built with NCCL — ProcessGroupNCCL for CUDA tensors. Every collective waits with the group's
// timeout, so a dead or hung peer becomes an error (with libtorch's message) instead of a hang.
#include "common.h"

#include <chrono>
#include <memory>
#include <string>

#include <torch/version.h>

#ifdef SUDO_WITH_GLOO
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#endif
#ifdef SUDO_WITH_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

namespace {

#ifdef SUDO_WITH_GLOO
// libtorch 2.x made ProcessGroupGloo/ProcessGroupNCCL c10d::Backends (a ProcessGroup dispatches to them);
// 1.13's derive from ProcessGroup. Both offer the same collectives with the same option structs.
#if TORCH_VERSION_MAJOR >= 2
using PgBase = c10d::Backend;
#else
using PgBase = c10d::ProcessGroup;
#endif

struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<PgBase> pg;
  std::chrono::milliseconds timeout;
  int rank;
  int world;
};

Group& G(sudo_pg h) {
  if (!h) throw std::invalid_argument("null process group handle");
  return *static_cast<Group*>(h);
}

void wait(const c10::intrusive_ptr<c10d::Work>& work, const Group& g) {
  if (!work->wait(g.timeout)) throw std::runtime_error("collective did not complete within the timeout");
}

c10d::ReduceOp reduce_op(int32_t op) {
  switch (op) {
    case 0: return c10d::ReduceOp::SUM;
    case 2: return c10d::ReduceOp::MAX;
    case 3: return c10d::ReduceOp::MIN;
    case 4: return c10d::ReduceOp::PRODUCT;
    default: throw std::invalid_argument("unknown reduce op");
  }
}
#endif

}  // namespace

extern "C" {

int32_t sudo_dist_available(void) {
#ifdef SUDO_WITH_GLOO
#ifdef SUDO_WITH_NCCL
  return 3;
#else
  return 1;
#endif
#else
  return 0;
#endif
}

sudo_pg sudo_pg_create(const char* master_addr, int32_t master_port, int32_t rank, int32_t world_size, int64_t timeout_ms,
                       int32_t backend, const char* prefix) {
#ifdef SUDO_WITH_GLOO
  try {
    auto g = std::make_unique<Group>();
    g->timeout = std::chrono::milliseconds(timeout_ms);
    g->rank = rank;
    g->world = world_size;
    c10d::TCPStoreOptions o;
    o.port = static_cast<std::uint16_t>(master_port);
    o.isServer = rank == 0;
    o.numWorkers = world_size;
    o.waitWorkers = true;
    o.timeout = g->timeout;
    c10::intrusive_ptr<c10d::TCPStore> tcp;
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
    // libtorch ≥ 2.4 defaults to the libuv store backend, which builds without libuv (Debian's libtorch-dev 2.6)
    // refuse; fall back to the classic backend there, as PyTorch's USE_LIBUV=0 does.
    try {
      tcp = c10::make_intrusive<c10d::TCPStore>(std::string(master_addr), o);
    } catch (const std::exception& e) {
      if (std::string(e.what()).find("libuv") == std::string::npos) throw;
      o.useLibUV = false;
      tcp = c10::make_intrusive<c10d::TCPStore>(std::string(master_addr), o);
    }
#else
    tcp = c10::make_intrusive<c10d::TCPStore>(std::string(master_addr), o);
#endif
    g->store = c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), tcp);
    if (backend == 1) {
#ifdef SUDO_WITH_NCCL
      auto opts = c10d::ProcessGroupNCCL::Options::create();
      opts->timeout = g->timeout;
      g->pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(g->store, rank, world_size, opts);
#else
      throw std::runtime_error("the NCCL backend needs the shim built against a CUDA libtorch with NCCL (set LIBTORCH)");
#endif
    } else {
      auto opts = c10d::ProcessGroupGloo::Options::create(g->timeout);
      opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      g->pg = c10::make_intrusive<c10d::ProcessGroupGloo>(g->store, rank, world_size, opts);
    }
    return g.release();
  }
  SUDO_CATCH
  return nullptr;
#else
  sudo::set_error("this shim was built without c10d/Gloo (install libgloo-dev and rebuild: scripts/setup.sh)");
  return nullptr;
#endif
}

int32_t sudo_pg_set_timeout(sudo_pg pg, int64_t timeout_ms) {
#ifdef SUDO_WITH_GLOO
  TRY_S(G(pg).timeout = std::chrono::milliseconds(timeout_ms);)
#else
  sudo::set_error("built without c10d");
  return -1;
#endif
}

void sudo_pg_free(sudo_pg pg) {
#ifdef SUDO_WITH_GLOO
  delete static_cast<Group*>(pg);
#endif
}

#ifdef SUDO_WITH_GLOO
int32_t sudo_pg_allreduce(sudo_pg pg, const sudo_tensor* ts, int32_t n, int32_t op) {
  TRY_S(auto& g = G(pg); auto v = sudo::list(ts, n); c10d::AllreduceOptions o; o.reduceOp = reduce_op(op); o.timeout = g.timeout;
        wait(g.pg->allreduce(v, o), g);)
}

int32_t sudo_pg_broadcast(sudo_pg pg, const sudo_tensor* ts, int32_t n, int32_t root) {
  TRY_S(auto& g = G(pg); auto v = sudo::list(ts, n); c10d::BroadcastOptions o; o.rootRank = root; o.timeout = g.timeout;
        wait(g.pg->broadcast(v, o), g);)
}

int32_t sudo_pg_allgather(sudo_pg pg, sudo_tensor input, sudo_tensor* outputs) {
  TRY_S(auto& g = G(pg); auto in = sudo::T(input); std::vector<at::Tensor> outs; outs.reserve(g.world);
        for (int i = 0; i < g.world; ++i) outs.push_back(at::empty_like(in));
        std::vector<std::vector<at::Tensor>> ov{outs}; std::vector<at::Tensor> iv{in};
        c10d::AllgatherOptions o; o.timeout = g.timeout; wait(g.pg->allgather(ov, iv, o), g);
        for (int i = 0; i < g.world; ++i) outputs[i] = sudo::wrap(ov[0][i]);)
}

int32_t sudo_pg_barrier(sudo_pg pg) {
  TRY_S(auto& g = G(pg); c10d::BarrierOptions o; o.timeout = g.timeout; wait(g.pg->barrier(o), g);)
}
#else
int32_t sudo_pg_allreduce(sudo_pg, const sudo_tensor*, int32_t, int32_t) { sudo::set_error("built without c10d"); return -1; }
int32_t sudo_pg_broadcast(sudo_pg, const sudo_tensor*, int32_t, int32_t) { sudo::set_error("built without c10d"); return -1; }
int32_t sudo_pg_allgather(sudo_pg, sudo_tensor, sudo_tensor*) { sudo::set_error("built without c10d"); return -1; }
int32_t sudo_pg_barrier(sudo_pg) { sudo::set_error("built without c10d"); return -1; }
#endif

}  // extern "C"
