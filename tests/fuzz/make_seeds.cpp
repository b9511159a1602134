// Writes valid messages of every protocol into DIR/{worker,kvstore,planner,gateway}/ as the
// fuzzers' seed corpora, so that fuzzing starts from well-formed structure and mutates from there.
// The gateway's seeds are HTTP bodies (JSON) of both OpenAI APIs.
#include <capnp/message.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "kvpr/net/wire.h"
#include "schemas/kvstore.capnp.h"
#include "schemas/planner.capnp.h"
#include "schemas/worker.capnp.h"

namespace {

namespace fs = std::filesystem;

void write(const fs::path& dir, const std::string& name, capnp::MallocMessageBuilder& message) {
  fs::create_directories(dir);
  const auto bytes = kvpr::net::encode(message);
  std::ofstream(dir / name, std::ios::binary)
      .write(static_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

void worker_seeds(const fs::path& dir) {
  {
    capnp::MallocMessageBuilder m;
    auto r = m.initRoot<kvpr::wire::WorkerRequest>();
    r.setId(1);
    auto g = r.initGenerate();
    auto prompts = g.initPrompts(2);
    auto p0 = prompts.init(0, 3);
    for (unsigned i = 0; i < 3; ++i) p0.set(i, static_cast<std::int32_t>(2 + i));
    prompts.init(1, 1).set(0, 7);
    g.setMaxNewTokens(4);
    g.setSplit(2);
    g.setKeepLogits(true);
    write(dir, "generate", m);
  }
  capnp::MallocMessageBuilder m;
  m.initRoot<kvpr::wire::WorkerRequest>().setStats();
  write(dir, "stats", m);
}

void kvstore_seeds(const fs::path& dir) {
  auto request = [&](const std::string& name, auto fill) {
    capnp::MallocMessageBuilder m;
    auto r = m.initRoot<kvpr::wire::KvRequest>();
    r.setId(3);
    r.initClient().setLo(1);
    fill(r);
    write(dir, name, m);
  };
  request("register", [](auto r) {
    auto reg = r.initRegister();
    reg.setName("seed");
    auto shape = reg.initShape();
    shape.setNLayers(2);
    shape.setH(64);
    shape.setHKv(64);
  });
  request("open", [](auto r) { r.setOpen(); });
  request("reserve", [](auto r) {
    auto t = r.initReserve();
    t.initSeq().setLo(1);
    t.setNTokens(20);
  });
  request("commit", [](auto r) {
    auto t = r.initCommit();
    t.initSeq().setLo(1);
    t.setNTokens(5);
  });
  request("reserve_batch", [](auto r) {
    auto b = r.initReserveBatch();
    auto seqs = b.initSeqs(3);
    for (unsigned i = 0; i < 3; ++i) seqs[i].setLo(i + 1);
    b.setNTokens(1);
  });
  request("commit_batch", [](auto r) {
    auto b = r.initCommitBatch();
    auto seqs = b.initSeqs(2);
    seqs[0].setLo(1);
    seqs[1].setLo(2);
    b.setNTokens(1);
  });
  request("locate", [](auto r) {
    auto l = r.initLocate();
    l.initSeq().setLo(1);
    l.setLayer(1);
    l.setPart(kvpr::wire::Part::V);
    l.setT0(0);
    l.setT1(5);
  });
  request("truncate", [](auto r) {
    auto t = r.initTruncate();
    t.initSeq().setLo(1);
    t.setNTokens(2);
  });
  request("length", [](auto r) { r.initLength().setLo(1); });
  request("free", [](auto r) { r.initFree().setLo(1); });
  request("stats", [](auto r) { r.setStats(); });
  request("heartbeat", [](auto r) { r.setHeartbeat(); });
}

void planner_seeds(const fs::path& dir) {
  {
    capnp::MallocMessageBuilder m;
    auto r = m.initRoot<kvpr::wire::PlannerRequest>();
    r.setId(5);
    auto p = r.initPlan();
    auto model = p.initModel();
    model.setNLayers(2);
    model.setH(64);
    model.setHKv(64);
    model.setFfn(256);
    model.setElementBytes(2);
    model.setBlockTokens(16);
    auto s = p.initS(2);
    s.set(0, 100);
    s.set(1, 37);
    p.setSplit(-1);
    p.setBytesPerS(25e9);
    p.setFlopsPerS(1e14);
    write(dir, "plan", m);
  }
  {
    capnp::MallocMessageBuilder m;
    auto r = m.initRoot<kvpr::wire::PlannerRequest>();
    r.setId(6);
    auto p = r.initReport();
    p.setFingerprint("seed");
    p.setH(64);
    p.setHKv(64);
    auto curve = p.initH2dBytesPerS(2);
    curve[0].setX(4096);
    curve[0].setY(1e9);
    curve[1].setX(1 << 20);
    curve[1].setY(2e10);
    auto rc = p.initRecomputeFlopsPerS(1);
    rc[0].setX(64);
    rc[0].setY(1e12);
    write(dir, "report", m);
  }
  capnp::MallocMessageBuilder m;
  m.initRoot<kvpr::wire::PlannerRequest>().setStats();
  write(dir, "stats", m);
}

// fuzz_gateway_request picks the API by the first byte's low bit: '{' (0x7B) is odd, so chat
// bodies start with '{' and completions bodies with ' ' (0x20, even) before it.
void gateway_seeds(const fs::path& dir) {
  fs::create_directories(dir);
  const auto seed = [&](const std::string& name, const std::string& body) {
    std::ofstream(dir / name, std::ios::binary) << body;
  };
  seed("completion", R"( {"model": "test-model", "prompt": "Hello", "max_tokens": 8})");
  seed("completion_all",
       R"( {"model": "test-model", "prompt": [1, 2, 3], "max_tokens": 7, "temperature": 0.5, )"
       R"("top_p": 0.9, "top_k": 40, "n": 2, "stream": true, "stream_options": )"
       R"({"include_usage": true}, "stop": ["a", "bc"], "seed": 42, "presence_penalty": 0.5, )"
       R"("frequency_penalty": -1, "logprobs": 2, "echo": true, "user": "u", "best_of": 2})");
  seed("completion_array", R"( {"model": "test-model", "prompt": ["one"], "stop": "x"})");
  seed("chat", R"({"model": "test-model", "messages": [{"role": "user", "content": "hi"}]})");
  seed("chat_all",
       R"({"model": "test-model", "max_completion_tokens": 9, "logprobs": true, )"
       R"("top_logprobs": 3, "temperature": 0, "stream": true, "n": 2, "messages": [)"
       R"({"role": "system", "content": "s"}, {"role": "user", "content": [{"type": "text", )"
       R"("text": "a"}]}, {"role": "assistant", "content": "c"}, {"role": "user", )"
       R"("content": "d"}], "response_format": {"type": "text"}})");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  const fs::path out = argv[1];
  worker_seeds(out / "worker");
  kvstore_seeds(out / "kvstore");
  planner_seeds(out / "planner");
  gateway_seeds(out / "gateway");
  return 0;
}
