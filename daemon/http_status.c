/* http_status.c — the reason phrase table; see http_status.h. */
#include "http_status.h"

/* One list, expanded into the table, its indices and the lookup switch. */
#define HTTP_STATUSES(X)                                                       \
  X(100, "Continue")                                                           \
  X(101, "Switching Protocols")                                                \
  X(200, "OK")                                                                 \
  X(201, "Created")                                                            \
  X(202, "Accepted")                                                           \
  X(203, "Non-Authoritative Information")                                      \
  X(204, "No Content")                                                         \
  X(206, "Partial Content")                                                    \
  X(300, "Multiple Choices")                                                   \
  X(301, "Moved Permanently")                                                  \
  X(302, "Found")                                                              \
  X(303, "See Other")                                                          \
  X(304, "Not Modified")                                                       \
  X(307, "Temporary Redirect")                                                 \
  X(308, "Permanent Redirect")                                                 \
  X(400, "Bad Request")                                                        \
  X(401, "Unauthorized")                                                       \
  X(403, "Forbidden")                                                          \
  X(404, "Not Found")                                                          \
  X(405, "Method Not Allowed")                                                 \
  X(406, "Not Acceptable")                                                     \
  X(408, "Request Timeout")                                                    \
  X(409, "Conflict")                                                           \
  X(410, "Gone")                                                               \
  X(411, "Length Required")                                                    \
  X(412, "Precondition Failed")                                                \
  X(413, "Content Too Large")                                                  \
  X(414, "URI Too Long")                                                       \
  X(415, "Unsupported Media Type")                                             \
  X(416, "Range Not Satisfiable")                                              \
  X(417, "Expectation Failed")                                                 \
  X(421, "Misdirected Request")                                                \
  X(422, "Unprocessable Content")                                              \
  X(425, "Too Early")                                                          \
  X(426, "Upgrade Required")                                                   \
  X(428, "Precondition Required")                                              \
  X(429, "Too Many Requests")                                                  \
  X(431, "Request Header Fields Too Large")                                    \
  X(500, "Internal Server Error")                                              \
  X(501, "Not Implemented")                                                    \
  X(502, "Bad Gateway")                                                        \
  X(503, "Service Unavailable")                                                \
  X(504, "Gateway Timeout")                                                    \
  X(505, "HTTP Version Not Supported")

#define LINE(code, reason) "HTTP/1.1 " #code " " reason "\r\n"

enum {
#define INDEX(code, reason) S_##code,
  HTTP_STATUSES(INDEX)
#undef INDEX
      S_COUNT
};

static const struct {
  const char *reason;
  const char *line;
  size_t line_len;
} statuses[S_COUNT] = {
#define ENTRY(code, reason)                                                    \
  [S_##code] = {reason, LINE(code, reason), sizeof LINE(code, reason) - 1},
    HTTP_STATUSES(ENTRY)
#undef ENTRY
};

/* The table index of a known code, or -1: a switch the compiler turns into
 * a jump table or a binary search. */
static int index_of(int status) {
  switch (status) {
#define CASE(code, reason)                                                     \
  case code:                                                                   \
    return S_##code;
    HTTP_STATUSES(CASE)
#undef CASE
  default:
    return -1;
  }
}

const char *http_status_reason(int status) {
  int i = index_of(status);
  return i < 0 ? "Unknown" : statuses[i].reason;
}

const char *http_status_line(int status, size_t *len) {
  int i = index_of(status);
  if (i < 0)
    return NULL;
  *len = statuses[i].line_len;
  return statuses[i].line;
}
