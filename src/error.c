/* error.c — the error table behind coalesce_strerror and its names. */
#include "coalesce.h"

const char *coalesce_strerror(int err) {
  switch (err) {
  case 0:
    return "success";
#define COALESCE_XX_(name, val, msg)                                           \
  case val:                                                                    \
    return msg;
    COALESCE_ERRNO_MAP(COALESCE_XX_)
#undef COALESCE_XX_
  default:
    return "unknown error";
  }
}

const char *coalesce_err_name(int err) {
  switch (err) {
  case 0:
    return "OK";
#define COALESCE_XX_(name, val, msg)                                           \
  case val:                                                                    \
    return "COALESCE_E" #name;
    COALESCE_ERRNO_MAP(COALESCE_XX_)
#undef COALESCE_XX_
  default:
    return "UNKNOWN";
  }
}
