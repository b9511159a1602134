// The backends the model-level suites (golden_test.cpp, policy_test.cpp) run on: each is a
// value-parametrised GoogleTest over rows of its own tolerance table, one row per backend and
// compute dtype, instantiated for the rows whose backend this build registers
// (kvpr/kernels/registry.h). A case whose backend cannot be created here (CUDA without a device)
// skips visibly with the reason; CTest labels every case not on the CPU backend `gpu`
// (tests/worker/CMakeLists.txt). A new backend is a new row in each table.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "kvpr/common/dtype.h"
#include "kvpr/kernels/registry.h"

namespace kvpr::worker::testing {

// One backend computing in one dtype.
struct BackendCase {
  std::string name;
  DType compute = DType::f32;

  kernels::BackendOptions options() const {
    kernels::BackendOptions o;
    o.name = name;
    o.compute_dtype = compute;
    return o;
  }
  // "cpu_F32": the first part of every case name (CTest and tools/gpu select cases by it).
  std::string label() const { return name + "_" + std::string(safetensors_name(compute)); }
};

inline bool registered(const std::string& backend) {
  const auto names = kernels::backend_names();
  return std::find(names.begin(), names.end(), backend) != names.end();
}

// The rows of `table` whose backend this build has, in table order.
template <typename Row>
std::vector<Row> registered_rows(const std::vector<Row>& table) {
  std::vector<Row> rows;
  for (const Row& row : table) {
    if (registered(row.backend.name)) rows.push_back(row);
  }
  return rows;
}

// nullopt when the backend can be created here; otherwise why not (asked once per backend).
inline std::optional<std::string> unavailable(const BackendCase& backend) {
  static std::map<std::string, std::optional<std::string>> reasons;
  auto it = reasons.find(backend.name);
  if (it == reasons.end()) {
    std::optional<std::string> reason;
    try {
      kernels::make_backend(backend.options());
    } catch (const std::exception& e) {
      reason = e.what();
    }
    it = reasons.emplace(backend.name, reason).first;
  }
  return it->second;
}

#define KVPR_SKIP_UNLESS_AVAILABLE(backend_case)                                                \
  do {                                                                                          \
    if (const auto why = ::kvpr::worker::testing::unavailable(backend_case)) {                  \
      GTEST_SKIP() << "backend '" << (backend_case).name << "' unavailable, not run: " << *why; \
    }                                                                                           \
  } while (false)

// tests/data, or $KVPR_TEST_DATA when set: the GPU cases also run from a bundle on another
// machine (tools/gpu-check), where the build tree's absolute path does not exist.
inline std::string test_data_dir() {
  const char* env = std::getenv("KVPR_TEST_DATA");
  return env != nullptr && *env != '\0' ? std::string(env) : std::string(KVPR_TEST_DATA);
}

}  // namespace kvpr::worker::testing
