// safetensors reading (mmap + validation) and writing (streamed, header first).
//
// Reading treats the file as hostile: every number from the header is range-checked before it is
// used as a size or offset, so a malformed file ends in one Error line naming the file and the
// tensor, never in an out-of-range read. The mapping is shared by every TensorView handed out and
// lives until the last of them is dropped.
#include "kvpr/common/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <system_error>

#include "json_shown.h"
#include "kvpr/common/error.h"

namespace kvpr {

namespace {

using nlohmann::json;

// The reference implementation refuses headers above 100 MB; so do we.
constexpr std::uint64_t kMaxHeader = 100'000'000;

// Closes a file descriptor on every path out of MappedFile's constructor.
struct FdGuard {
  int fd = -1;
  ~FdGuard() {
    if (fd >= 0) ::close(fd);
  }
};

// A non-negative integer from the header that fits int64; false for anything else.
bool as_count(const json& value, std::uint64_t& out) {
  if (value.is_number_unsigned()) {
    out = value.get<std::uint64_t>();
  } else if (value.is_number_integer() && value.get<std::int64_t>() >= 0) {
    out = static_cast<std::uint64_t>(value.get<std::int64_t>());
  } else {
    return false;
  }
  return out <= static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
}

using detail::shown;

// Bytes of numel elements of `dtype`; false on overflow.
bool byte_count(const std::vector<std::int64_t>& shape, DType dtype, std::uint64_t& out) {
  std::uint64_t n = size_of(dtype);
  for (const std::int64_t d : shape) {
    if (d < 0 || __builtin_mul_overflow(n, static_cast<std::uint64_t>(d), &n)) return false;
  }
  out = n;
  return true;
}

}  // namespace

std::string quoted_name(std::string_view name) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out = "'";
  for (const char ch : name) {
    const auto u = static_cast<unsigned char>(ch);
    if (u < 0x20 || u == 0x7f || ch == '\\') {
      out += "\\x";
      out += kHex[u >> 4];
      out += kHex[u & 15];
    } else {
      out += ch;
    }
  }
  return out + "'";
}

std::string shape_string(const std::vector<std::int64_t>& shape) {
  std::string out = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) out += (i ? "," : "") + std::to_string(shape[i]);
  return out + "]";
}

MappedFile::MappedFile(const std::filesystem::path& path) : path_(path) {
  FdGuard fd{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  if (fd.fd < 0) fail(path.string(), ": cannot open: ", std::strerror(errno));
  struct stat st {};
  if (::fstat(fd.fd, &st) != 0) fail(path.string(), ": cannot stat: ", std::strerror(errno));
  if (!S_ISREG(st.st_mode)) fail(path.string(), ": not a regular file");
  size_ = static_cast<std::size_t>(st.st_size);
  if (size_ == 0) return;  // mmap refuses length 0; an empty mapping is just (nullptr, 0)
  void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd.fd, 0);
  if (p == MAP_FAILED) {
    raise(ErrorKind::overloaded, path.string(), ": cannot map ", size_,
          " bytes: ", std::strerror(errno));
  }
  data_ = static_cast<const std::byte*>(p);
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(const_cast<std::byte*>(data_), size_);
}

std::int64_t TensorView::numel() const {
  std::int64_t n = 1;
  for (const std::int64_t d : shape) n *= d;
  return n;
}

SafetensorsFile::SafetensorsFile(const std::filesystem::path& path)
    : file_(std::make_shared<const MappedFile>(path)) {
  const std::string where = path.string();
  const std::size_t size = file_->size();
  if (size < 8) fail(where, ": ", size, " bytes, too short for the 8-byte header length");
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | std::to_integer<std::uint64_t>(file_->data()[i]);
  if (n > kMaxHeader) fail(where, ": header length ", n, " is absurd (limit ", kMaxHeader, ")");
  if (n > size - 8)
    fail(where, ": header length ", n, " runs past the end of the file (", size, " bytes)");
  const auto* text = reinterpret_cast<const char*>(file_->data() + 8);
  const json header = json::parse(text, text + n, nullptr, false);
  if (header.is_discarded()) fail(where, ": header is not valid JSON");
  if (!header.is_object()) fail(where, ": header is not a JSON object");

  const std::byte* data_start = file_->data() + 8 + n;
  const std::uint64_t data_size = size - 8 - n;
  struct Span {
    std::uint64_t begin, end;
    const std::string* name;
  };
  std::vector<Span> spans;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") continue;
    const std::string at = where + ": tensor " + quoted_name(name);
    if (!entry.is_object()) fail(at, ": entry is not an object");
    for (const char* key : {"dtype", "shape", "data_offsets"}) {
      if (!entry.contains(key)) fail(at, ": missing ", key);
    }
    TensorView view;
    view.name = name;
    const json& dtype = entry["dtype"];
    if (!dtype.is_string() || !parse_safetensors_dtype(dtype.get<std::string>(), view.dtype)) {
      fail(at, ": unknown dtype ",
           dtype.is_string() ? quoted_name(dtype.get<std::string>()) : shown(dtype));
    }
    const json& shape = entry["shape"];
    if (!shape.is_array()) fail(at, ": shape is not a list: ", shown(shape));
    for (const json& d : shape) {
      std::uint64_t dim = 0;
      if (!as_count(d, dim)) fail(at, ": shape ", shown(shape), " has a bad dimension ", shown(d));
      view.shape.push_back(static_cast<std::int64_t>(dim));
    }
    const json& offsets = entry["data_offsets"];
    std::uint64_t begin = 0, end = 0;
    if (!offsets.is_array() || offsets.size() != 2 || !as_count(offsets[0], begin) ||
        !as_count(offsets[1], end) || begin > end) {
      fail(at, ": bad data_offsets ", shown(offsets));
    }
    if (end > data_size) {
      fail(at, ": data_offsets ", shown(offsets), " run past the data section (", data_size,
           " bytes)");
    }
    std::uint64_t nbytes = 0;
    if (!byte_count(view.shape, view.dtype, nbytes) || nbytes != end - begin) {
      fail(at, ": shape ", shape_string(view.shape), " of ", safetensors_name(view.dtype),
           " does not match data_offsets ", shown(offsets), " (", end - begin, " bytes)");
    }
    if (nbytes != 0 && (8 + n + begin) % size_of(view.dtype) != 0) {
      fail(at, ": data at file offset ", 8 + n + begin, " is not aligned to its ",
           size_of(view.dtype), "-byte elements");
    }
    view.data = data_start + begin;
    view.nbytes = static_cast<std::size_t>(nbytes);
    view.file = file_;
    const auto [it, inserted] = tensors_.emplace(name, std::move(view));
    spans.push_back({begin, end, &it->first});
  }
  // Empty tensors occupy no bytes and cannot overlap anything.
  std::erase_if(spans, [](const Span& s) { return s.begin == s.end; });
  std::sort(spans.begin(), spans.end(),
            [](const Span& a, const Span& b) { return a.begin < b.begin; });
  for (std::size_t i = 1; i < spans.size(); ++i) {
    if (spans[i].begin < spans[i - 1].end) {
      fail(where, ": tensor ", quoted_name(*spans[i].name), " [", spans[i].begin, ",", spans[i].end,
           ") overlaps tensor ", quoted_name(*spans[i - 1].name), " [", spans[i - 1].begin, ",",
           spans[i - 1].end, ")");
    }
  }
}

SafetensorsWriter::SafetensorsWriter(std::filesystem::path path, std::vector<TensorToWrite> layout)
    : path_(std::move(path)), tmp_path_(path_.string() + ".tmp"), layout_(std::move(layout)) {
  const std::string where = path_.string();
  std::sort(layout_.begin(), layout_.end(), [](const TensorToWrite& a, const TensorToWrite& b) {
    if (size_of(a.dtype) != size_of(b.dtype)) return size_of(a.dtype) > size_of(b.dtype);
    return a.name < b.name;
  });
  // Entries are keyed by name in the header; data follows layout order.
  std::map<std::string, std::string> entries;
  for (const TensorToWrite& t : layout_) {
    std::uint64_t nbytes = 0;
    if (!byte_count(t.shape, t.dtype, nbytes)) {
      fail(where, ": tensor ", quoted_name(t.name), ": bad shape ", shape_string(t.shape));
    }
    std::string key;
    try {
      key = json(t.name).dump();
    } catch (const json::exception&) {
      fail(where, ": tensor ", quoted_name(t.name), ": name is not valid UTF-8");
    }
    if (t.name == "__metadata__") fail(where, ": tensor name '__metadata__' is reserved");
    const std::string entry = str(key, R"(:{"dtype":")", safetensors_name(t.dtype), R"(","shape":)",
                                  shape_string(t.shape), R"(,"data_offsets":[)", data_bytes_, ",",
                                  data_bytes_ + nbytes, "]}");
    if (!entries.emplace(t.name, entry).second)
      fail(where, ": tensor ", quoted_name(t.name), " listed twice");
    data_bytes_ += nbytes;
  }
  std::string header = R"({"__metadata__":{"format":"pt"})";
  for (const auto& [name, entry] : entries) header += "," + entry;
  header += "}";
  header.append((8 - header.size() % 8) % 8, ' ');

  out_ = std::fopen(tmp_path_.c_str(), "wb");
  if (out_ == nullptr) fail(tmp_path_.string(), ": cannot create: ", std::strerror(errno));
  unsigned char len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(header.size() >> (8 * i));
  if (std::fwrite(len, 1, 8, out_) != 8 ||
      std::fwrite(header.data(), 1, header.size(), out_) != header.size()) {
    const int err = errno;
    std::fclose(out_);  // the destructor does not run for a throwing constructor
    std::error_code ec;
    std::filesystem::remove(tmp_path_, ec);
    fail(tmp_path_.string(), ": write failed: ", std::strerror(err));
  }
}

SafetensorsWriter::~SafetensorsWriter() {
  if (out_ == nullptr) return;  // finished (or never opened)
  std::fclose(out_);
  std::error_code ec;
  std::filesystem::remove(tmp_path_, ec);
}

void SafetensorsWriter::append(const void* bytes, std::size_t n) {
  if (out_ == nullptr) fail(path_.string(), ": append after finish");
  if (n > data_bytes_ - written_) {
    fail(path_.string(), ": ", written_ + n, " data bytes appended but the header holds ",
         data_bytes_);
  }
  if (n != 0 && std::fwrite(bytes, 1, n, out_) != n) {
    fail(tmp_path_.string(), ": write failed: ", std::strerror(errno));
  }
  written_ += n;
}

void SafetensorsWriter::finish() {
  if (out_ == nullptr) fail(path_.string(), ": finish called twice");
  if (written_ != data_bytes_) {
    fail(path_.string(), ": only ", written_, " of ", data_bytes_, " data bytes were appended");
  }
  std::FILE* out = out_;
  out_ = nullptr;
  if (std::fclose(out) != 0) {
    std::error_code ec;
    std::filesystem::remove(tmp_path_, ec);
    fail(tmp_path_.string(), ": close failed: ", std::strerror(errno));
  }
  std::error_code ec;
  std::filesystem::rename(tmp_path_, path_, ec);
  if (ec)
    fail(path_.string(), ": cannot rename from ", tmp_path_.filename().string(), ": ",
         ec.message());
}

void write_safetensors(const std::filesystem::path& path,
                       const std::vector<TensorToWrite>& tensors) {
  SafetensorsWriter writer(path, tensors);
  for (const TensorToWrite& t : writer.layout()) {
    std::uint64_t nbytes = 0;
    byte_count(t.shape, t.dtype, nbytes);  // validated by the writer
    if (nbytes != 0 && t.data == nullptr)
      fail(path.string(), ": tensor ", quoted_name(t.name), " has no data");
    writer.append(t.data, static_cast<std::size_t>(nbytes));
  }
  writer.finish();
}

}  // namespace kvpr
