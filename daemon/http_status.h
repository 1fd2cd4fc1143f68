/*
 * http_status.h — reason phrases and status lines of HTTP status codes,
 * shared by the server's own answers (http_conn.c) and stored upstream
 * responses (response.c), so both say the same thing.
 */
#ifndef COALESCED_HTTP_STATUS_H
#define COALESCED_HTTP_STATUS_H

#include <stddef.h>

/* "Not Found" for 404; "Unknown" for codes it does not know (the reason
 * phrase carries no meaning to clients, RFC 9112 §4). */
const char *http_status_reason(int status);

/* "HTTP/1.1 404 Not Found\r\n" for a code with a reason above (a static
 * string, *len its length), NULL for any other code: a stored response
 * then keeps its own line. Constant time: every hit asks. */
const char *http_status_line(int status, size_t *len);

#endif
