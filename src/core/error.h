// Errors are values: every fallible public entry returns Result<T> (or Status), whose error carries a
// message with its context (file, tensor, flag). The CLI prints it once and exits non-zero.
#pragma once
#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>
#include <variant>

namespace meshdit {

struct Error {
  std::string message;
  // Prepends context, so the outermost caller's words come first: "loading transformer: file.safetensors: ...".
  Error context(const std::string& where) const { return Error{where + ": " + message}; }
};

template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}  // NOLINT: implicit by design
  Result(Error err) : v_(std::move(err)) {}  // NOLINT
  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }
  T& value() & { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  const T& value() const& { return std::get<0>(v_); }
  T& operator*() & { return value(); }
  T* operator->() { return &value(); }
  const Error& error() const { return std::get<1>(v_); }

 private:
  std::variant<T, Error> v_;
};

struct Ok {};
using Status = Result<Ok>;
inline Status ok_status() { return Ok{}; }

inline Error make_error(std::string msg) { return Error{std::move(msg)}; }

// Programming errors (a kernel called with shapes its caller validated) abort with a message; input
// errors never reach these.
[[noreturn]] inline void fatal(const char* file, int line, const std::string& msg) {
  std::fprintf(stderr, "meshdit internal error at %s:%d: %s\n", file, line, msg.c_str());
  std::abort();
}

}  // namespace meshdit

#define MD_CHECK(cond, msg)                                               \
  do {                                                                    \
    if (!(cond)) ::meshdit::fatal(__FILE__, __LINE__, std::string(msg));  \
  } while (0)

#define MD_CONCAT_INNER(a, b) a##b
#define MD_CONCAT(a, b) MD_CONCAT_INNER(a, b)

// MD_TRY(auto x, expr): a statement sequence (brace it under an if). Evaluates a Result-returning expr, returns its error from the enclosing function,
// or binds the value.
#define MD_TRY(decl, expr) MD_TRY_IMPL(MD_CONCAT(md_try_, __COUNTER__), decl, expr)
#define MD_TRY_IMPL(tmp, decl, expr)       \
  auto tmp = (expr);                       \
  if (!tmp.ok()) return tmp.error();       \
  decl = std::move(tmp).value()

// MD_RETURN_IF_ERROR(status_expr)
#define MD_RETURN_IF_ERROR(expr)                                 \
  do {                                                           \
    auto md_st_ = (expr);                                        \
    if (!md_st_.ok()) return md_st_.error();                     \
  } while (0)
