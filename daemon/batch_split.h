/*
 * batch_split.h — the pure half of request batching (DESIGN.md §5): which
 * requests are single-id requests, how the ids of a batch are named, and how
 * a batch answer is cut into one body per id. No I/O, no locks, no globals:
 * every function is safe on any thread and is fuzzed (fuzz_batch_split).
 *
 * The id path (route key `batch_id_path`) says where the items and their ids
 * are in the JSON answer. Segments are object member names joined by '.';
 * exactly one segment carries an iteration marker:
 *   "data[].id"        {"data":[{"id":"1",...},...]}   items of an array,
 *                      each item's id found by the segments after the marker
 *   "[].meta.id"       [{"meta":{"id":1}},...]        the root is the array
 *   "result{}"         {"result":{"1":{...},"2":{...}}} members of an object,
 *                      keyed by id (nothing may follow "{}")
 * Member names cannot contain '.', '[', ']', '{' or '}'. If an object holds
 * a name twice the last one counts (as in JavaScript). An id is a JSON
 * string (compared after unescaping) or a number (compared as written, so
 * 5 matches the request id "5"); items whose id is anything else, or that
 * lack it, are ignored. If two items carry the same id the first one wins.
 *
 * The wrap template (route key `batch_item_wrap`) is JSON with one bare
 * ITEM token where the item goes, e.g. {"data":[ITEM]}; NULL or "" means
 * the item itself. A per-id body is the template with ITEM replaced by the
 * item's bytes exactly as the upstream sent them (numbers, escapes and key
 * order untouched: re-serialising with jansson would print 0.1 as
 * 0.10000000000000001). jansson validates the whole answer first, so the
 * span scanner here only ever walks well-formed JSON.
 *
 * The join (route key `batch_join`, proposed) says how the ids travel in the
 * batch call: NULL, "" or "repeat" repeat the parameter (id=1&id=2); any
 * other value is a separator between ids in one parameter (ids=1,2,3).
 */
#ifndef COALESCED_BATCH_SPLIT_H
#define COALESCED_BATCH_SPLIT_H

#include <stdbool.h>
#include <stddef.h>

#define BATCH_SPLIT_DEFAULT_ID_PATH "data[].id"
#define BATCH_SPLIT_MAX_SEGMENTS 16
#define BATCH_SPLIT_MAX_JOIN 16

/* Results of batch_split. */
#define BATCH_SPLIT_EMALFORMED (-1) /* not JSON, or no array/object at the
                                       id path: answer each id with 502 */
#define BATCH_SPLIT_ENOMEM (-2)
#define BATCH_SPLIT_EINVAL (-3) /* bad id path or wrap (see _check) */

typedef struct batch_str {
  const char *p;
  size_t len;
} batch_str_t;

/* One id's body: malloc'd (free with batch_parts_free), NUL-terminated
 * (not counted in len); body NULL when the answer had no item for it. */
typedef struct batch_part {
  char *body;
  size_t len;
} batch_part_t;

/* True when `join` means "repeat the parameter". */
bool batch_join_is_repeat(const char *join);

/* Validates the route settings (any may be NULL = default). Returns 0, or -1
 * with a one-line reason in err (without the key name's location). For
 * config_finalize. */
int batch_split_check(const char *id_path, const char *wrap, const char *join,
                      char *err, size_t errlen);

/* Is `target` (normalised path, then '?' and the canonical query, as the
 * proxy keys and forwards it) a single-id request? It is when the query
 * holds `param` exactly once, as param=VALUE with a non-empty VALUE that
 * (with a separator join) does not contain the separator. Then returns 0,
 * sets *id to VALUE (pointing into target, still percent-encoded as in the
 * canonical query) and writes the base target — target without that
 * parameter, without '?' if no parameter remains — to base (base_cap >= len
 * always suffices), NUL-terminated, length in *base_len. Otherwise -1: the
 * request is served unbatched. */
int batch_split_target(const char *target, size_t len, const char *param,
                       const char *join, char *base, size_t base_cap,
                       size_t *base_len, batch_str_t *id);

/* Percent-decodes a query value (%XX, and '+' as a space, as form decoding
 * does) into out (room for len bytes; not NUL-terminated). Returns the
 * decoded length. A malformed escape is copied as is. */
size_t batch_id_decode(const char *in, size_t len, char *out);

/* Cuts a batch answer into bodies for the decoded ids ids[0..nids): parts
 * (nids entries, zeroed by the callee) get each found item, wrapped. Ids
 * may repeat (each copy gets the body). Returns 0; BATCH_SPLIT_EMALFORMED
 * or BATCH_SPLIT_EINVAL with a short reason in err (never quoting the
 * answer); BATCH_SPLIT_ENOMEM. On any error every part is NULL. */
int batch_split(const char *id_path, const char *wrap, const char *json,
                size_t json_len, const batch_str_t *ids, size_t nids,
                batch_part_t *parts, char *err, size_t errlen);

/* Frees the bodies of parts[0..n) (not the array). */
void batch_parts_free(batch_part_t *parts, size_t n);

#endif
