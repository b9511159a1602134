// Helpers for the tests of the kvstore service: reading a Prometheus series out of a registry.
#pragma once

#include <prometheus/registry.h>

#include <limits>
#include <map>
#include <string>

namespace kvpr::kvstore::testing {

// The value of series `name{labels}` (counter or gauge); NaN when it does not exist.
inline double metric(prometheus::Registry& registry, const std::string& name,
                     const std::map<std::string, std::string>& labels = {}) {
  for (const auto& family : registry.Collect()) {
    if (family.name != name) continue;
    for (const auto& series : family.metric) {
      std::map<std::string, std::string> have;
      for (const auto& label : series.label) have[label.name] = label.value;
      if (have != labels) continue;
      return family.type == prometheus::MetricType::Counter ? series.counter.value
                                                            : series.gauge.value;
    }
  }
  return std::numeric_limits<double>::quiet_NaN();
}

}  // namespace kvpr::kvstore::testing
