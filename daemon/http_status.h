/*
 * http_status.h — reason phrases of HTTP status codes, shared by the
 * server's own answers (http_conn.c) and the status lines of stored
 * upstream responses (response.c), so both say the same thing.
 */
#ifndef COALESCED_HTTP_STATUS_H
#define COALESCED_HTTP_STATUS_H

/* "Not Found" for 404; "Unknown" for codes it does not know (the reason
 * phrase carries no meaning to clients, RFC 9112 §4). */
const char *http_status_reason(int status);

#endif
