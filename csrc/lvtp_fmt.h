// Error messages of the compiled kernels, built without std::ostream (host code only).
//
// Ops: none. lvtp::fmt(a, b, ...) -> std::string from C strings, std::string, string_view,
// integers, doubles (%g) and shapes (c10::IntArrayRef, printed as [2, 50, 8]). Used for every
// TORCH_CHECK message ("lvtp.<op>: ..."). No tensors, no precision or determinism concerns.
//
// TORCH_CHECK(cond, a, b, ...) formats its arguments through c10::str, an ostringstream.
// Built with a toolchain whose libstdc++ templates get instantiated inside this library
// (seen on the GPU image: /opt/gcc/bin/g++ against the system's libstdc++ 13 headers), the
// library carries its own copy of std::num_put<char>'s facet id, the locale has no facet at
// that index, and streaming an integer segfaults -- the error path itself crashes. So every
// check here passes TORCH_CHECK one ready std::string (c10::str returns a single string
// unchanged, no stream), formatted with std::to_string / snprintf.
#pragma once

#include <c10/util/ArrayRef.h>
#include <c10/util/string_view.h>

#include <cstdint>
#include <cstdio>
#include <string>

namespace lvtp {

inline void fmt_one(std::string& s, const char* v) { s += v; }
inline void fmt_one(std::string& s, const std::string& v) { s += v; }
inline void fmt_one(std::string& s, c10::string_view v) { s.append(v.data(), v.size()); }
inline void fmt_one(std::string& s, int v) { s += std::to_string(v); }
inline void fmt_one(std::string& s, long v) { s += std::to_string(v); }
inline void fmt_one(std::string& s, long long v) { s += std::to_string(v); }
inline void fmt_one(std::string& s, unsigned long v) { s += std::to_string(v); }
inline void fmt_one(std::string& s, double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  s += buf;
}
inline void fmt_one(std::string& s, c10::IntArrayRef v) {
  s += "[";
  for (size_t i = 0; i < v.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(v[i]);
  }
  s += "]";
}

template <typename... A>
std::string fmt(const A&... a) {
  std::string s;
  (fmt_one(s, a), ...);
  return s;
}

}  // namespace lvtp
