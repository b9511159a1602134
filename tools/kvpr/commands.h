// The subcommands of the `kvpr` command line. main.cpp parses flags into these structs (and is the
// only file that includes CLI11); each command throws kvpr::Error on bad input and returns an exit
// code otherwise.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kvpr::cli {

struct BackendFlags {
  std::string backend = "cpu";
  double emulate_link_gbps = 0;
  double emulate_link_latency_us = 0;
  int threads = 0;
};

struct RunOptions {
  std::string model;
  std::vector<std::string> prompts;        // text, encoded with the checkpoint's tokenizer
  std::vector<std::string> prompt_tokens;  // "2,31,45", one per sequence
  std::int64_t max_new_tokens = 16;
  std::string policy = "kvpr";
  std::string split = "auto";
  BackendFlags backend;
  std::string logits_out;
  bool json = false;
  std::uint64_t capacity_bytes = 8ull << 30;
  bool quiet = false;
};

struct GenModelOptions {
  std::string arch;
  std::string preset;
  std::string out;
  std::string dtype;  // empty: the preset's
  std::uint64_t seed = 0;
  std::int64_t layers = 0;  // 0: the preset's
  bool quiet = false;
};

struct DemoOptions {
  std::string dir = "kvpr-demo-model";
  std::string preset = "opt-125m";
  std::int64_t max_new_tokens = 24;
  BackendFlags backend;
};

int run_command(const RunOptions& options);
int gen_model_command(const GenModelOptions& options);
int demo_command(const DemoOptions& options);

}  // namespace kvpr::cli
