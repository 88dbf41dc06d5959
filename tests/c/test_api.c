/*
 * The C API test suite: a plain C99 program that links libbalena_device the
 * way a user does and calls every function of include/balena_device.h
 * against the supervisor simulator (tests/sim), checking return codes, the
 * text it writes, and the request the simulator recorded.
 *
 * Run by tests/c_api.rs (plain, under ASan/UBSan, and under valgrind via
 * .ci/valgrind.sh). By hand:
 *
 *   cargo build
 *   cc -std=c99 -Wall -Wextra -Werror -pedantic -pthread -Iinclude \
 *      tests/c/test_api.c -Ltarget/debug -lbalena_device \
 *      -Wl,-rpath,"$PWD/target/debug" -o target/test_api
 *   BALENA_SUPERVISOR_ADDRESS=http://127.0.0.1:PORT \
 *   BALENA_SUPERVISOR_API_KEY=sim-key-0123456789abcdef BALENA_APP_ID=1234 \
 *   BD_TEST_LOG_INTERVAL_MS=1500 ./target/test_api
 *
 * Environment:
 *   BALENA_SUPERVISOR_ADDRESS, BALENA_SUPERVISOR_API_KEY, BALENA_APP_ID:
 *       a freshly started simulator (its initial key and app id).
 *   BD_TEST_LOG_INTERVAL_MS: the simulator's log interval (time between two
 *       lines of a log stream); default 1500. Must be >= 1000.
 *   BD_TEST_TIME_SCALE: multiplies every time limit (slow runners such as
 *       valgrind); default 1.
 *
 * The simulator is driven and inspected through its control routes
 * (POST /_sim/reset, POST /_sim/state, GET /_sim/state, GET /_sim/last),
 * spoken with the small raw-socket HTTP client below.
 *
 * Output: one line per check ("ok N - ..." or "FAIL N - ..."), then
 * "N passed, M failed"; the exit status is 1 when a check failed.
 */

#define _DEFAULT_SOURCE
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <time.h>
#include <unistd.h>

#include "balena_device.h"

/* ------------------------------------------------------------------ checks */

static int g_passed;
static int g_failed;
static int g_checks;

/* The key the simulator expects now; an error text must never contain it. */
static char g_key[256];
static char g_initial_key[256];
static char g_addr[256];
static unsigned g_app_id;
static long g_scale = 1;
static long g_log_interval_ms = 1500;

static void report(int ok, int line, const char *what, const char *detail)
{
    g_checks++;
    if (ok) {
        g_passed++;
        printf("ok %d - %s\n", g_checks, what);
    } else {
        g_failed++;
        printf("FAIL %d - %s (test_api.c:%d)%s%s\n", g_checks, what, line,
               detail && *detail ? ": " : "", detail ? detail : "");
    }
    fflush(stdout);
}

static void check_at(int ok, int line, const char *what, const char *fmt, ...)
{
    char detail[2048] = "";
    if (!ok && fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(detail, sizeof detail, fmt, ap);
        va_end(ap);
    }
    report(ok, line, what, detail);
}

#define CHECK(cond, what) check_at((cond) ? 1 : 0, __LINE__, (what), NULL)

/* A return code check. For an error it also requires a non-empty
 * bd_last_error that does not contain the current API key; for BD_OK an
 * empty bd_last_error. */
static void check_rc_at(int rc, int expected, int line, const char *what)
{
    const char *err = bd_last_error();
    char detail[2048];
    int ok = rc == expected;
    detail[0] = '\0';
    if (!ok) {
        snprintf(detail, sizeof detail, "got %d (%s), expected %d (%s); last error: %s", rc,
                 bd_strerror(rc), expected, bd_strerror(expected), err ? err : "(NULL)");
    } else if (err == NULL) {
        ok = 0;
        snprintf(detail, sizeof detail, "bd_last_error() returned NULL");
    } else if (rc < 0 && err[0] == '\0') {
        ok = 0;
        snprintf(detail, sizeof detail, "bd_last_error() is empty after an error");
    } else if (rc >= 0 && err[0] != '\0') {
        ok = 0;
        snprintf(detail, sizeof detail, "bd_last_error() not empty after success: %s", err);
    } else if (g_key[0] && strstr(err, g_key)) {
        ok = 0;
        snprintf(detail, sizeof detail, "bd_last_error() contains the API key: %s", err);
    }
    report(ok, line, what, detail);
}

#define CHECK_RC(expr, expected, what) check_rc_at((expr), (expected), __LINE__, (what))

static int contains(const char *hay, const char *needle)
{
    return hay && needle && strstr(hay, needle) != NULL;
}

static long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long)ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

static void section(const char *name)
{
    printf("# %s\n", name);
    fflush(stdout);
}

/* ------------------------------------------------- raw-socket HTTP client */

typedef struct {
    int status;
    char *body; /* NUL-terminated, malloc'd */
    size_t len;
} http_resp;

static char g_host[128];
static char g_port[16];

static int parse_address(const char *addr)
{
    const char *p;
    const char *colon;
    const char *end;
    size_t hl;
    if (strncmp(addr, "http://", 7) != 0)
        return -1;
    p = addr + 7;
    colon = strchr(p, ':');
    if (!colon)
        return -1;
    hl = (size_t)(colon - p);
    if (hl == 0 || hl >= sizeof g_host)
        return -1;
    memcpy(g_host, p, hl);
    g_host[hl] = '\0';
    end = colon + 1;
    hl = strcspn(end, "/");
    if (hl == 0 || hl >= sizeof g_port)
        return -1;
    memcpy(g_port, end, hl);
    g_port[hl] = '\0';
    return 0;
}

static int tcp_connect(void)
{
    struct addrinfo hints;
    struct addrinfo *res = NULL;
    struct addrinfo *ai;
    int fd = -1;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(g_host, g_port, &hints, &res) != 0)
        return -1;
    for (ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
        if (fd < 0)
            continue;
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
            break;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    return fd;
}

static int send_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* De-chunk a chunked body in place; returns the new length or -1. */
static long dechunk(char *b, size_t n)
{
    size_t in = 0;
    size_t out = 0;
    for (;;) {
        char *endp;
        unsigned long sz;
        char *crlf;
        if (in >= n)
            return -1;
        sz = strtoul(b + in, &endp, 16);
        crlf = strstr(endp, "\r\n");
        if (!crlf)
            return -1;
        in = (size_t)(crlf - b) + 2;
        if (sz == 0)
            break;
        if (in + sz > n)
            return -1;
        memmove(b + out, b + in, sz);
        out += sz;
        in += sz + 2;
    }
    b[out] = '\0';
    return (long)out;
}

/* One request on a fresh connection ("Connection: close"); the whole
 * response is read until EOF. Returns 0 and fills *out, or -1. */
static int sim_http(const char *method, const char *path, const char *body, http_resp *out)
{
    char head[512];
    size_t blen = body ? strlen(body) : 0;
    size_t cap = 65536;
    size_t n = 0;
    char *buf;
    char *hend;
    size_t hlen;
    int fd = tcp_connect();
    out->status = 0;
    out->body = NULL;
    out->len = 0;
    if (fd < 0)
        return -1;
    snprintf(head, sizeof head,
             "%s %s HTTP/1.1\r\nHost: %s:%s\r\nConnection: close\r\n"
             "Content-Type: application/json\r\nContent-Length: %lu\r\n\r\n",
             method, path, g_host, g_port, (unsigned long)blen);
    if (send_all(fd, head, strlen(head)) != 0 || (blen && send_all(fd, body, blen) != 0)) {
        close(fd);
        return -1;
    }
    buf = malloc(cap);
    if (!buf) {
        close(fd);
        return -1;
    }
    for (;;) {
        ssize_t r;
        if (n + 4096 + 1 > cap) {
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                close(fd);
                return -1;
            }
            buf = nb;
            cap *= 2;
        }
        r = recv(fd, buf + n, cap - n - 1, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        n += (size_t)r;
    }
    close(fd);
    buf[n] = '\0';
    if (n < 12 || strncmp(buf, "HTTP/1.", 7) != 0) {
        free(buf);
        return -1;
    }
    out->status = atoi(buf + 9);
    hend = strstr(buf, "\r\n\r\n");
    if (!hend) {
        free(buf);
        return -1;
    }
    *hend = '\0';
    hlen = (size_t)(hend - buf) + 4;
    {
        /* Lower-case the head to look for the transfer encoding. */
        char *h;
        int chunked;
        for (h = buf; *h; h++)
            if (*h >= 'A' && *h <= 'Z')
                *h = (char)(*h - 'A' + 'a');
        chunked = strstr(buf, "transfer-encoding: chunked") != NULL;
        memmove(buf, buf + hlen, n - hlen + 1);
        n -= hlen;
        if (chunked) {
            long m = dechunk(buf, n);
            if (m < 0) {
                free(buf);
                return -1;
            }
            n = (size_t)m;
        }
    }
    out->body = buf;
    out->len = n;
    return 0;
}

static void die(const char *msg)
{
    printf("FATAL: %s\n", msg);
    printf("%d passed, %d failed\n", g_passed, g_failed + 1);
    fflush(stdout);
    exit(2);
}

/* A control-route call that must answer 200; returns the malloc'd body. */
static char *sim_ctl(const char *method, const char *path, const char *body)
{
    http_resp r;
    if (sim_http(method, path, body, &r) != 0)
        die("the simulator's control route did not answer");
    if (r.status != 200) {
        printf("control route %s %s answered %d: %s\n", method, path, r.status,
               r.body ? r.body : "");
        free(r.body);
        die("control route failed");
    }
    return r.body;
}

static void sim_reset(void)
{
    free(sim_ctl("POST", "/_sim/reset", NULL));
    snprintf(g_key, sizeof g_key, "%s", g_initial_key);
}

static void sim_set(const char *json)
{
    free(sim_ctl("POST", "/_sim/state", json));
}

/* GET /_sim/state, malloc'd. */
static char *sim_state(void)
{
    return sim_ctl("GET", "/_sim/state", NULL);
}

/* Whether GET /_sim/state contains `needle`. */
static int sim_state_has(const char *needle)
{
    char *s = sim_state();
    int yes = strstr(s, needle) != NULL;
    free(s);
    return yes;
}

static long json_number_after(const char *json, const char *key)
{
    char pat[128];
    const char *p;
    snprintf(pat, sizeof pat, "\"%s\":", key);
    p = strstr(json, pat);
    if (!p)
        return -1;
    return strtol(p + strlen(pat), NULL, 10);
}

/* Recorded requests so far. */
static long sim_request_count(void)
{
    char *s = sim_state();
    long n = json_number_after(s, "requests");
    free(s);
    return n;
}

/* Copy the JSON string value of `"key":"..."` (first occurrence) into out,
 * unescaped (\uXXXX outside ASCII becomes '?'). Returns 1 when found. */
static int json_string_field(const char *json, const char *key, char *out, size_t outlen)
{
    char pat[128];
    const char *p;
    size_t o = 0;
    snprintf(pat, sizeof pat, "\"%s\":\"", key);
    p = strstr(json, pat);
    if (!p || outlen == 0)
        return 0;
    p += strlen(pat);
    while (*p && *p != '"') {
        char c = *p++;
        if (c == '\\') {
            c = *p++;
            switch (c) {
            case 'n': c = '\n'; break;
            case 't': c = '\t'; break;
            case 'r': c = '\r'; break;
            case 'b': c = '\b'; break;
            case 'f': c = '\f'; break;
            case 'u': {
                char hex[5];
                unsigned long v;
                if (strlen(p) < 4)
                    return 0;
                memcpy(hex, p, 4);
                hex[4] = '\0';
                v = strtoul(hex, NULL, 16);
                c = v < 0x80 ? (char)v : '?';
                p += 4;
                break;
            }
            case '\0': return 0;
            default: break; /* \" \\ \/ */
            }
        }
        if (o + 1 < outlen)
            out[o++] = c;
    }
    out[o] = '\0';
    return 1;
}

typedef struct {
    int found;
    char method[16];
    char path[512];
    char raw_query[1024];
    char query[1024]; /* the decoded query object, as JSON text */
    char content_type[128];
    char body[8192];
} sim_req;

/* GET /_sim/last into *r (r->found 0 when nothing was recorded). */
static void sim_last(sim_req *r)
{
    char *s = sim_ctl("GET", "/_sim/last", NULL);
    const char *q;
    memset(r, 0, sizeof *r);
    if (strncmp(s, "null", 4) == 0) {
        free(s);
        return;
    }
    r->found = 1;
    json_string_field(s, "method", r->method, sizeof r->method);
    json_string_field(s, "path", r->path, sizeof r->path);
    json_string_field(s, "raw_query", r->raw_query, sizeof r->raw_query);
    json_string_field(s, "content-type", r->content_type, sizeof r->content_type);
    json_string_field(s, "body", r->body, sizeof r->body);
    q = strstr(s, "\"query\":{");
    if (q) {
        const char *e = strchr(q, '}');
        size_t l = e ? (size_t)(e - q) + 1 : 0;
        if (l >= sizeof r->query)
            l = sizeof r->query - 1;
        memcpy(r->query, q, l);
        r->query[l] = '\0';
    }
    free(s);
}

enum { KEY_ANY = -1, KEY_NONE = 0, KEY_CURRENT = 1 };

/* Check the last recorded request: method, path, body (exact when
 * body_exact, else substrings body_sub and body_sub2 when given, "" meaning
 * an empty body), a JSON content type when the body is not empty, and the
 * apikey query parameter. */
static void check_wire_at(int line, const char *what, const char *method, const char *path,
                          const char *body_exact, const char *body_sub, const char *body_sub2,
                          int key)
{
    sim_req r;
    char detail[2048] = "";
    int ok = 1;
    char want_key[300];
    sim_last(&r);
    snprintf(want_key, sizeof want_key, "\"apikey\":\"%s\"", g_key);
    if (!r.found) {
        ok = 0;
        snprintf(detail, sizeof detail, "no request was recorded");
    } else if (strcmp(r.method, method) != 0 || strcmp(r.path, path) != 0) {
        ok = 0;
        snprintf(detail, sizeof detail, "recorded %s %s", r.method, r.path);
    } else if (body_exact && strcmp(r.body, body_exact) != 0) {
        ok = 0;
        snprintf(detail, sizeof detail, "body %.900s, expected %.900s", r.body, body_exact);
    } else if ((body_sub && !strstr(r.body, body_sub)) ||
               (body_sub2 && !strstr(r.body, body_sub2))) {
        ok = 0;
        snprintf(detail, sizeof detail, "body %.900s lacks %.400s / %.400s", r.body, body_sub ? body_sub : "",
                 body_sub2 ? body_sub2 : "");
    } else if (r.body[0] && strncmp(r.content_type, "application/json", 16) != 0) {
        ok = 0;
        snprintf(detail, sizeof detail, "content-type %.100s for body %.900s",
                 r.content_type[0] ? r.content_type : "(none)", r.body);
    } else if (key == KEY_CURRENT && !strstr(r.query, want_key)) {
        ok = 0;
        snprintf(detail, sizeof detail, "query %s lacks the current apikey", r.query);
    } else if (key == KEY_NONE && strstr(r.raw_query, "apikey")) {
        ok = 0;
        snprintf(detail, sizeof detail, "query %s carries a key", r.raw_query);
    }
    {
        char label[600];
        snprintf(label, sizeof label, "%s: wire %s %s%s%s", what, method, path,
                 body_exact && body_exact[0] ? " " : "", body_exact ? body_exact : "");
        report(ok, line, label, detail);
    }
}

#define CHECK_WIRE(what, method, path, body_exact, key)                                            \
    check_wire_at(__LINE__, (what), (method), (path), (body_exact), NULL, NULL, (key))
#define CHECK_WIRE_SUB(what, method, path, sub1, sub2)                                             \
    check_wire_at(__LINE__, (what), (method), (path), NULL, (sub1), (sub2), KEY_CURRENT)

/* "nothing was sent" around a call: compare recorded request counts. */
#define CHECK_NOTHING_SENT(before, what) CHECK(sim_request_count() == (before), (what))

/* Reset the simulator and the library's configuration to a known start. */
static void fresh(void)
{
    sim_reset();
    if (bd_init(g_addr, g_key) != BD_OK)
        die("bd_init with the simulator's address and key failed");
    if (bd_set_timeout_ms((uint32_t)(5000 * g_scale)) != BD_OK)
        die("bd_set_timeout_ms failed");
}

/* ------------------------------------------------------------- callbacks */

typedef struct {
    int count;
    int stop_after; /* 0: never stop */
    int bad;        /* a line that was not NUL-terminated at len or had a newline */
    char lines[8][512];
} lines_ctx;

static int on_line(const char *line, size_t len, void *userdata)
{
    lines_ctx *c = (lines_ctx *)userdata;
    if (line == NULL || line[len] != '\0' || strlen(line) != len || memchr(line, '\n', len))
        c->bad++;
    if (c->count < 8)
        snprintf(c->lines[c->count], sizeof c->lines[0], "%s", line ? line : "");
    c->count++;
    return c->stop_after > 0 && c->count >= c->stop_after;
}

/* Sleeps *(long *)arg milliseconds, then calls bd_stop_streams(). */
static void *stop_streams_later(void *arg)
{
    long ms = *(long *)arg;
    struct timespec ts;
    ts.tv_sec = ms / 1000;
    ts.tv_nsec = (ms % 1000) * 1000000L;
    nanosleep(&ts, NULL);
    bd_stop_streams();
    return NULL;
}

/* ------------------------------------------------------------- sections */

static void test_library(void)
{
    char v[64];
    int i;
    const char *s0;
    section("library: version, status texts, header constants");
    snprintf(v, sizeof v, "%d.%d.%d", BD_VERSION_MAJOR, BD_VERSION_MINOR, BD_VERSION_PATCH);
    CHECK(bd_version() != NULL, "bd_version() is not NULL");
    check_at(strcmp(bd_version(), v) == 0, __LINE__, "bd_version() equals BD_VERSION_MAJOR.MINOR.PATCH",
             "bd_version() %s, macros %s", bd_version(), v);
    CHECK(strcmp(bd_version(), BD_VERSION_STRING) == 0, "bd_version() equals BD_VERSION_STRING");
    CHECK(BD_CURRENT_APP == 0, "BD_CURRENT_APP is 0");
    CHECK(BD_OK == 0 && BD_ERR_INVALID_ARGUMENT == -1 && BD_ERR_NOT_CONFIGURED == -2 &&
              BD_ERR_CONNECT == -3 && BD_ERR_TIMEOUT == -4 && BD_ERR_IO == -5 &&
              BD_ERR_UNAUTHORIZED == -6 && BD_ERR_LOCKED == -7 && BD_ERR_BAD_REQUEST == -8 &&
              BD_ERR_NOT_FOUND == -9 && BD_ERR_SERVER == -10 && BD_ERR_HTTP == -11 &&
              BD_ERR_INVALID_RESPONSE == -12 && BD_ERR_TOO_LARGE == -13 &&
              BD_ERR_INTERNAL == -14 && BD_ERR_BUSY == -15 && BD_ERR_HOST_UPDATE == -16,
          "bd_status values are the contract's");
    CHECK(BD_LOCK_NONE == 0 && BD_LOCK_THIS_PROCESS == 1 && BD_LOCK_OTHER == 2 &&
              BD_LOCK_SUPERVISOR == 3 && BD_LOCK_STALE == 4,
          "bd_lock_holder values are the contract's");
    {
        int distinct = 1;
        int nonempty = 1;
        int j;
        for (i = 0; i >= -16; i--) {
            const char *a = bd_strerror(i);
            if (!a || !a[0] || strcmp(a, "unknown status") == 0)
                nonempty = 0;
            for (j = i - 1; j >= -16 && a; j--)
                if (bd_strerror(j) && strcmp(a, bd_strerror(j)) == 0)
                    distinct = 0;
        }
        CHECK(nonempty, "bd_strerror() describes every status 0..-16");
        CHECK(distinct, "bd_strerror() texts are distinct");
    }
    s0 = bd_strerror(BD_OK);
    check_at(s0 && strcmp(s0, "success") == 0, __LINE__, "bd_strerror(BD_OK) is \"success\"",
             "got %s", s0 ? s0 : "(NULL)");
    CHECK(bd_strerror(-17) && strcmp(bd_strerror(-17), "unknown status") == 0,
          "bd_strerror(-17) is \"unknown status\"");
    CHECK(bd_strerror(12345) && strcmp(bd_strerror(12345), "unknown status") == 0,
          "bd_strerror(12345) is \"unknown status\"");
    CHECK(bd_strerror(BD_ERR_LOCKED) == bd_strerror(BD_ERR_LOCKED),
          "bd_strerror() returns static text (same pointer twice)");
    {
        bd_device_state st;
        CHECK(sizeof st.status == 32 && sizeof st.commit == 72 && sizeof st.os_version == 64 &&
                  sizeof st.supervisor_version == 32 && sizeof st.ip_address == 256 &&
                  sizeof st.mac_address == 256,
              "bd_device_state string fields have the contract's sizes");
        CHECK(offsetof(bd_device_state, status) < offsetof(bd_device_state, commit) &&
                  offsetof(bd_device_state, commit) < offsetof(bd_device_state, os_version) &&
                  offsetof(bd_device_state, os_version) <
                      offsetof(bd_device_state, supervisor_version) &&
                  offsetof(bd_device_state, supervisor_version) <
                      offsetof(bd_device_state, ip_address) &&
                  offsetof(bd_device_state, ip_address) < offsetof(bd_device_state, mac_address) &&
                  offsetof(bd_device_state, mac_address) <
                      offsetof(bd_device_state, download_progress) &&
                  offsetof(bd_device_state, download_progress) <
                      offsetof(bd_device_state, api_port) &&
                  offsetof(bd_device_state, api_port) <
                      offsetof(bd_device_state, update_pending) &&
                  offsetof(bd_device_state, update_pending) <
                      offsetof(bd_device_state, update_downloaded) &&
                  offsetof(bd_device_state, update_downloaded) <
                      offsetof(bd_device_state, update_failed),
              "bd_device_state fields are in the contract's order");
    }
}

static void test_config(void)
{
    char env_addr[256];
    char env_key[256];
    char env_app[32];
    int listener;
    char refused[128];
    struct sockaddr_in sa;
    socklen_t sl = sizeof sa;
    static const char *const fallbacks[] = {
        "BALENA_SUPERVISOR_ADDRESS", "RESIN_SUPERVISOR_ADDRESS", "BALENA_SUPERVISOR_HOST",
        "BALENA_SUPERVISOR_PORT",    "RESIN_SUPERVISOR_HOST",    "RESIN_SUPERVISOR_PORT",
        "BALENA_SUPERVISOR_API_KEY", "RESIN_SUPERVISOR_API_KEY"};
    size_t i;
    long t0;
    int rc;

    section("configuration: bd_init, bd_init_from_env, bd_cleanup, bd_set_timeout_ms");
    snprintf(env_addr, sizeof env_addr, "%s", getenv("BALENA_SUPERVISOR_ADDRESS"));
    snprintf(env_key, sizeof env_key, "%s", getenv("BALENA_SUPERVISOR_API_KEY"));
    snprintf(env_app, sizeof env_app, "%s", getenv("BALENA_APP_ID"));
    sim_reset();

    /* From the environment on first use, without bd_init. */
    CHECK_RC(bd_ping(), BD_OK, "first call configures the client from the environment");
    CHECK_WIRE("bd_ping", "GET", "/ping", "", KEY_NONE);
    CHECK(bd_last_http_status() == 200, "bd_last_http_status() is 200 after bd_ping");
    CHECK_RC(bd_blink(), BD_OK, "bd_blink with the key from the environment");
    CHECK_WIRE("bd_blink", "POST", "/v1/blink", "", KEY_CURRENT);

    /* Nothing configured. */
    bd_cleanup();
    for (i = 0; i < sizeof fallbacks / sizeof fallbacks[0]; i++)
        unsetenv(fallbacks[i]);
    CHECK_RC(bd_ping(), BD_ERR_NOT_CONFIGURED, "bd_ping with no address anywhere");
    CHECK(contains(bd_last_error(), "BALENA_SUPERVISOR_ADDRESS") &&
              contains(bd_last_error(), "io.balena.features.supervisor-api"),
          "NOT_CONFIGURED error names the variable and the io.balena.features.supervisor-api label");
    CHECK(bd_last_http_status() == 0, "bd_last_http_status() is 0 when nothing was sent");
    CHECK_RC(bd_init_from_env(), BD_ERR_NOT_CONFIGURED, "bd_init_from_env with an empty environment");
    CHECK_RC(bd_init(NULL, g_key), BD_ERR_NOT_CONFIGURED, "bd_init(NULL, key): address from an empty environment");
    setenv("BALENA_SUPERVISOR_ADDRESS", env_addr, 1);
    CHECK_RC(bd_init_from_env(), BD_ERR_NOT_CONFIGURED, "bd_init_from_env with an address but no key");
    CHECK(contains(bd_last_error(), "BALENA_SUPERVISOR_API_KEY"),
          "NOT_CONFIGURED error names BALENA_SUPERVISOR_API_KEY");
    setenv("BALENA_SUPERVISOR_API_KEY", env_key, 1);
    CHECK_RC(bd_init_from_env(), BD_OK, "bd_init_from_env once both are set");
    CHECK_RC(bd_blink(), BD_OK, "bd_blink after bd_init_from_env");
    CHECK_WIRE("bd_blink after bd_init_from_env", "POST", "/v1/blink", "", KEY_CURRENT);

    /* RESIN_ fallbacks and HOST+PORT. */
    unsetenv("BALENA_SUPERVISOR_ADDRESS");
    unsetenv("BALENA_SUPERVISOR_API_KEY");
    setenv("RESIN_SUPERVISOR_ADDRESS", env_addr, 1);
    setenv("RESIN_SUPERVISOR_API_KEY", env_key, 1);
    CHECK_RC(bd_init_from_env(), BD_OK, "bd_init_from_env from RESIN_SUPERVISOR_ADDRESS/_API_KEY");
    CHECK_RC(bd_blink(), BD_OK, "bd_blink with the RESIN_ configuration");
    unsetenv("RESIN_SUPERVISOR_ADDRESS");
    setenv("BALENA_SUPERVISOR_HOST", g_host, 1);
    setenv("BALENA_SUPERVISOR_PORT", g_port, 1);
    CHECK_RC(bd_init(NULL, NULL), BD_OK, "bd_init(NULL, NULL) from BALENA_SUPERVISOR_HOST+PORT");
    CHECK_RC(bd_blink(), BD_OK, "bd_blink with the HOST+PORT configuration");
    CHECK_WIRE("bd_blink via HOST+PORT", "POST", "/v1/blink", "", KEY_CURRENT);
    unsetenv("BALENA_SUPERVISOR_HOST");
    unsetenv("BALENA_SUPERVISOR_PORT");
    unsetenv("RESIN_SUPERVISOR_API_KEY");
    setenv("BALENA_SUPERVISOR_ADDRESS", env_addr, 1);
    setenv("BALENA_SUPERVISOR_API_KEY", env_key, 1);
    setenv("BALENA_APP_ID", env_app, 1);

    /* bd_init argument checks; a failed bd_init keeps the configuration. */
    CHECK_RC(bd_init(g_addr, g_key), BD_OK, "bd_init(address, key)");
    CHECK_RC(bd_init("https://127.0.0.1:48484", g_key), BD_ERR_INVALID_ARGUMENT, "bd_init with https:// is refused");
    CHECK_RC(bd_init("ftp://127.0.0.1:48484", g_key), BD_ERR_INVALID_ARGUMENT, "bd_init with ftp:// is refused");
    CHECK_RC(bd_init("http://127.0.0.1:99999", g_key), BD_ERR_INVALID_ARGUMENT, "bd_init with port 99999 is refused");
    CHECK_RC(bd_init("http://127.0.0.1:48484/v1", g_key), BD_ERR_INVALID_ARGUMENT, "bd_init with a path is refused");
    CHECK_RC(bd_init("http://127.0.0.1\r\n:48484", g_key), BD_ERR_INVALID_ARGUMENT, "bd_init with CR/LF in the address is refused");
    CHECK_RC(bd_init("http://:48484", g_key), BD_ERR_INVALID_ARGUMENT, "bd_init without a host is refused");
    CHECK_RC(bd_init("\xff\xfe", g_key), BD_ERR_INVALID_ARGUMENT, "bd_init with a non-UTF-8 address is refused");
    CHECK_RC(bd_init(g_addr, ""), BD_ERR_INVALID_ARGUMENT, "bd_init with an empty key is refused");
    CHECK_RC(bd_init(g_addr, "a key"), BD_ERR_INVALID_ARGUMENT, "bd_init with white space in the key is refused");
    CHECK_RC(bd_init(g_addr, "key\r\nX-Evil: 1"), BD_ERR_INVALID_ARGUMENT, "bd_init with CR/LF in the key is refused");
    CHECK_RC(bd_blink(), BD_OK, "the configuration survives failed bd_init calls");
    CHECK_WIRE("bd_blink after failed bd_init", "POST", "/v1/blink", "", KEY_CURRENT);
    {
        char slash[300];
        snprintf(slash, sizeof slash, "%s/", g_addr);
        CHECK_RC(bd_init(slash, g_key), BD_OK, "bd_init accepts a trailing slash");
        CHECK_RC(bd_ping(), BD_OK, "bd_ping with a trailing-slash address");
        CHECK_WIRE("trailing slash is not doubled", "GET", "/ping", "", KEY_NONE);
    }

    /* The key goes percent-encoded in the apikey query parameter. */
    sim_set("{\"api_key\":\"k+y/z%1&x=2\"}");
    snprintf(g_key, sizeof g_key, "%s", "k+y/z%1&x=2");
    CHECK_RC(bd_init(g_addr, g_key), BD_OK, "bd_init with a key that needs percent-encoding");
    CHECK_RC(bd_blink(), BD_OK, "bd_blink: the simulator decodes the key the library encoded");
    CHECK_WIRE("percent-encoded key", "POST", "/v1/blink", "", KEY_CURRENT);
    fresh();

    /* Timeouts. */
    CHECK_RC(bd_set_timeout_ms(0), BD_ERR_INVALID_ARGUMENT, "bd_set_timeout_ms(0) is refused");
    CHECK_RC(bd_set_timeout_ms((uint32_t)(300 * g_scale)), BD_OK, "bd_set_timeout_ms(300)");
    {
        char js[64];
        snprintf(js, sizeof js, "{\"stall_ms\":%ld}", 2500 * g_scale);
        sim_set(js);
    }
    t0 = now_ms();
    CHECK_RC(bd_ping(), BD_ERR_TIMEOUT, "bd_ping against a stalled supervisor times out");
    check_at(now_ms() - t0 < 300 * g_scale + 1500 * g_scale, __LINE__,
             "the timeout returned within the deadline + margin", "took %ld ms", now_ms() - t0);
    CHECK(bd_last_http_status() == 0, "bd_last_http_status() is 0 after a timeout");
    t0 = now_ms();
    CHECK_RC(bd_wait_for_supervisor((uint32_t)(300 * g_scale)), BD_ERR_TIMEOUT,
             "bd_wait_for_supervisor against a stalled supervisor gives BD_ERR_TIMEOUT");
    check_at(now_ms() - t0 < 300 * g_scale + 1500 * g_scale, __LINE__,
             "bd_wait_for_supervisor bounded each ping by the time left", "took %ld ms", now_ms() - t0);
    sim_set("{\"stall_ms\":0}");
    CHECK_RC(bd_wait_for_supervisor((uint32_t)(3000 * g_scale)), BD_OK,
             "bd_wait_for_supervisor when the supervisor answers");
    CHECK_WIRE("bd_wait_for_supervisor", "GET", "/ping", "", KEY_NONE);
    CHECK_RC(bd_wait_for_supervisor(0), BD_ERR_INVALID_ARGUMENT, "bd_wait_for_supervisor(0) is refused");

    /* bd_cleanup drops the client and restores the default timeout. */
    CHECK_RC(bd_set_timeout_ms((uint32_t)(200 * g_scale)), BD_OK, "bd_set_timeout_ms(200)");
    bd_cleanup();
    CHECK(bd_last_error() && bd_last_error()[0] == '\0', "bd_cleanup leaves no error");
    {
        char js[64];
        snprintf(js, sizeof js, "{\"stall_ms\":%ld}", 700 * g_scale);
        sim_set(js);
    }
    CHECK_RC(bd_ping(), BD_OK, "after bd_cleanup the default timeout (30 s) applies again");
    sim_set("{\"stall_ms\":0}");
    CHECK_RC(bd_blink(), BD_OK, "after bd_cleanup the client comes from the environment again");
    CHECK_WIRE("bd_blink after bd_cleanup", "POST", "/v1/blink", "", KEY_CURRENT);

    /* Connection refused: a port bound but not listening. */
    listener = socket(AF_INET, SOCK_STREAM, 0);
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sa.sin_port = 0;
    if (listener < 0 || bind(listener, (struct sockaddr *)&sa, sizeof sa) != 0 ||
        getsockname(listener, (struct sockaddr *)&sa, &sl) != 0)
        die("cannot bind a local socket");
    snprintf(refused, sizeof refused, "http://127.0.0.1:%u", (unsigned)ntohs(sa.sin_port));
    CHECK_RC(bd_init(refused, g_key), BD_OK, "bd_init with a port nobody listens on");
    rc = bd_ping();
    CHECK_RC(rc, BD_ERR_CONNECT, "bd_ping to a closed port gives BD_ERR_CONNECT");
    CHECK(bd_last_http_status() == 0, "bd_last_http_status() is 0 when no response arrived");
    CHECK_RC(bd_wait_for_supervisor((uint32_t)(300 * g_scale)), BD_ERR_TIMEOUT,
             "bd_wait_for_supervisor on a closed port gives BD_ERR_TIMEOUT");
    close(listener);
    fresh();
}

static void test_errors(void)
{
    char buf[256];
    section("errors: last error, HTTP status, UNAUTHORIZED, LOCKED, 409, SERVER, ...");
    fresh();

    /* Wrong key: UNAUTHORIZED, and the key never in the message. */
    {
        const char *wrong = "WrongSecretKey0123456789";
        snprintf(g_key, sizeof g_key, "%s", wrong);
        CHECK_RC(bd_init(g_addr, wrong), BD_OK, "bd_init with a wrong key");
        CHECK_RC(bd_blink(), BD_ERR_UNAUTHORIZED, "bd_blink with a wrong key gives BD_ERR_UNAUTHORIZED");
        CHECK(bd_last_http_status() == 401, "bd_last_http_status() is 401");
        check_at(!contains(bd_last_error(), wrong), __LINE__,
                 "the wrong key does not appear in bd_last_error()", "%s", bd_last_error());
        check_at(contains(bd_last_error(), "/v1/blink") && contains(bd_last_error(), "401"),
                 __LINE__, "bd_last_error() names the request and the status", "%s", bd_last_error());
        CHECK_WIRE("wrong key is sent as given", "POST", "/v1/blink", "", KEY_CURRENT);
        CHECK_RC(bd_state_json(buf, sizeof buf), BD_ERR_UNAUTHORIZED, "bd_state_json with a wrong key");
        CHECK(!contains(bd_last_error(), wrong), "the wrong key does not appear after a GET either");
        CHECK_RC(bd_ping(), BD_OK, "bd_ping needs no key");
        CHECK_WIRE("bd_ping sends no key", "GET", "/ping", "", KEY_NONE);
        CHECK_RC(bd_healthy(), 1, "bd_healthy needs no key");
        CHECK_WIRE("bd_healthy sends no key", "GET", "/v1/healthy", "", KEY_NONE);
        CHECK(bd_last_error()[0] == '\0', "bd_last_error() is \"\" after a success");
        CHECK(bd_last_http_status() == 200, "bd_last_http_status() is 200 after a success");
    }
    fresh();

    /* LOCKED. */
    sim_set("{\"locked\":true}");
    CHECK_RC(bd_reboot(false), BD_ERR_LOCKED, "bd_reboot(false) while locked gives BD_ERR_LOCKED");
    CHECK(bd_last_http_status() == 423, "bd_last_http_status() is 423");
    check_at(contains(bd_last_error(), "/v1/reboot") && contains(bd_last_error(), "423") &&
                 contains(bd_last_error(), "Lockfile exists"),
             __LINE__, "bd_last_error() names the request, 423 and the supervisor's message", "%s",
             bd_last_error());
    check_at(!contains(bd_last_error(), g_key), __LINE__, "the key does not appear in a LOCKED error",
             "%s", bd_last_error());
    CHECK_WIRE("bd_reboot(false)", "POST", "/v1/reboot", "{\"force\":false}", KEY_CURRENT);
    CHECK(!sim_state_has("\"reboot"), "the simulator did not reboot");

    /* 409 */
    CHECK_RC(bd_application_state_json(999999, buf, sizeof buf), BD_ERR_HTTP,
             "bd_application_state_json(unknown app) gives BD_ERR_HTTP");
    CHECK(bd_last_http_status() == 409, "bd_last_http_status() is 409");
    check_at(contains(bd_last_error(), "409"), __LINE__, "bd_last_error() mentions 409", "%s",
             bd_last_error());
    CHECK_WIRE("bd_application_state_json(999999)", "GET", "/v2/applications/999999/state", "", KEY_CURRENT);

    /* SERVER */
    CHECK_RC(bd_restart(999999), BD_ERR_SERVER, "bd_restart(app not on the device) gives BD_ERR_SERVER");
    CHECK(bd_last_http_status() == 503, "bd_last_http_status() is 503");
    check_at(contains(bd_last_error(), "999999"), __LINE__,
             "bd_last_error() carries the supervisor's message", "%s", bd_last_error());
    sim_set("{\"tags_api_down\":true}");
    CHECK_RC(bd_device_tags_json(buf, sizeof buf), BD_ERR_SERVER, "bd_device_tags_json with the balena API down gives BD_ERR_SERVER");
    CHECK(bd_last_http_status() == 500, "bd_last_http_status() is 500");

    /* BAD_REQUEST / NOT_FOUND */
    sim_set("{\"multi_container\":true}");
    CHECK_RC(bd_app_state_json(g_app_id, buf, sizeof buf), BD_ERR_BAD_REQUEST,
             "bd_app_state_json on a multi-container app gives BD_ERR_BAD_REQUEST");
    CHECK(bd_last_http_status() == 400, "bd_last_http_status() is 400");
    check_at(contains(bd_last_error(), "single-container"), __LINE__,
             "bd_last_error() carries the supervisor's text", "%s", bd_last_error());
    CHECK_RC(bd_restart_service(g_app_id, "nosuchservice", false), BD_ERR_NOT_FOUND,
             "bd_restart_service(unknown service) gives BD_ERR_NOT_FOUND");
    CHECK(bd_last_http_status() == 404, "bd_last_http_status() is 404");

    /* INVALID_ARGUMENT: status 0 and nothing sent */
    {
        long before = sim_request_count();
        CHECK_RC(bd_state_json(NULL, 10), BD_ERR_INVALID_ARGUMENT, "bd_state_json(NULL, 10)");
        CHECK(bd_last_http_status() == 0, "bd_last_http_status() is 0 after bad input");
        CHECK_NOTHING_SENT(before, "bad input sends nothing");
    }

    /* Crash: the connection drops without an answer. */
    sim_set("{\"crash_next\":true}");
    CHECK_RC(bd_reboot(false), BD_ERR_IO, "a dropped connection on bd_reboot gives BD_ERR_IO");
    CHECK(!sim_state_has("\"reboot"), "the dropped reboot was not re-sent");
    CHECK_RC(bd_ping(), BD_OK, "the next call works after a dropped connection");

    /* INVALID_RESPONSE and TOO_LARGE */
    sim_set("{\"device\":[1,2,3]}");
    CHECK_RC(bd_state_json(buf, sizeof buf), BD_ERR_INVALID_RESPONSE,
             "bd_state_json when the answer is not an object gives BD_ERR_INVALID_RESPONSE");
    CHECK(bd_last_http_status() == 200, "bd_last_http_status() is 200 for an invalid body");
    {
        size_t big = 5u * 1024u * 1024u;
        char *js = malloc(big + 64);
        if (!js)
            die("out of memory");
        size_t pre;
        strcpy(js, "{\"device\":{\"pad\":\"");
        pre = strlen(js);
        memset(js + pre, 'x', big);
        strcpy(js + pre + big, "\"}}");
        sim_set(js);
        free(js);
        CHECK_RC(bd_state_json(buf, sizeof buf), BD_ERR_TOO_LARGE,
                 "bd_state_json of a 5 MiB answer gives BD_ERR_TOO_LARGE");
    }

    /* The last error is per thread. */
    fresh();
    sim_set("{\"locked\":true}");
    CHECK_RC(bd_shutdown(false), BD_ERR_LOCKED, "bd_shutdown(false) while locked (main thread)");
    fresh();
}

typedef struct {
    int rc;
    int status;
    char err[512];
} thread_result;

static void *thread_body(void *arg)
{
    thread_result *r = (thread_result *)arg;
    r->rc = bd_ping();
    r->status = bd_last_http_status();
    snprintf(r->err, sizeof r->err, "%s", bd_last_error());
    return NULL;
}

static void test_threads(void)
{
    pthread_t t;
    thread_result r;
    char err_before[512];
    section("thread-local last error");
    fresh();
    sim_set("{\"locked\":true}");
    CHECK_RC(bd_reboot(false), BD_ERR_LOCKED, "main thread: bd_reboot(false) while locked");
    snprintf(err_before, sizeof err_before, "%s", bd_last_error());
    memset(&r, 0, sizeof r);
    if (pthread_create(&t, NULL, thread_body, &r) != 0)
        die("pthread_create failed");
    pthread_join(t, NULL);
    CHECK(r.rc == BD_OK && r.status == 200 && r.err[0] == '\0',
          "another thread's successful call has its own empty last error and status 200");
    check_at(strcmp(bd_last_error(), err_before) == 0 && bd_last_http_status() == 423, __LINE__,
             "the main thread's last error and status are untouched by the other thread", "%s / %d",
             bd_last_error(), bd_last_http_status());
    fresh();
}

/* A thread whose library calls are made from a pthread_key destructor, after
 * the thread's own TLS destructors have run: its last error must be there
 * (and, under valgrind, nothing it used may leak). */
static pthread_key_t g_exit_key;
static char g_exit_err[512];
static int g_exit_rc;

static void exit_destructor(void *value)
{
    (void)value;
    g_exit_rc = bd_init("ftp://in-a-destructor", "k");
    snprintf(g_exit_err, sizeof g_exit_err, "%s", bd_last_error());
}

static void *exit_thread_body(void *arg)
{
    if (arg) /* a call before the destructor, so the thread has used the library */
        bd_init("ftp://before", "k");
    pthread_setspecific(g_exit_key, (void *)1);
    return NULL;
}

static void test_thread_exit(void)
{
    int first;
    section("calls from a pthread_key destructor");
    if (pthread_key_create(&g_exit_key, exit_destructor) != 0)
        die("pthread_key_create failed");
    for (first = 0; first < 2; first++) {
        pthread_t t;
        g_exit_rc = 1;
        g_exit_err[0] = '\0';
        if (pthread_create(&t, NULL, exit_thread_body, first ? NULL : (void *)1) != 0)
            die("pthread_create failed");
        pthread_join(t, NULL);
        check_at(g_exit_rc == BD_ERR_INVALID_ARGUMENT && contains(g_exit_err, "ftp://"), __LINE__,
                 first ? "a first call from a thread-exit destructor keeps its message"
                       : "a failing call from a thread-exit destructor keeps its message",
                 "rc %d, last error \"%s\"", g_exit_rc, g_exit_err);
    }
    pthread_key_delete(g_exit_key);
}

typedef int (*text_fn)(char *, size_t);

/* snprintf rules for one text function: size query, full buffer, len 1,
 * exact fit minus one, exact fit, NULL with len > 0; canaries after the
 * allowed length stay untouched. */
static void check_text_fn(const char *name, text_fn fn, const char *path, const char *expect_sub)
{
    static char buf[65536];
    char what[256];
    char *full;
    int n;
    int r;
    long before;

    snprintf(what, sizeof what, "%s(NULL, 0) size query returns the length", name);
    n = fn(NULL, 0);
    check_rc_at(n > 0 ? 1 : n, 1, __LINE__, what);
    if (n <= 0 || (size_t)n + 2 > sizeof buf)
        return;
    snprintf(what, sizeof what, "%s size query", name);
    check_wire_at(__LINE__, what, "GET", path, "", NULL, NULL, KEY_CURRENT);

    memset(buf, 'Z', sizeof buf);
    r = fn(buf, sizeof buf);
    snprintf(what, sizeof what, "%s full buffer: returns the length, NUL-terminated, contains %s", name,
             expect_sub);
    check_at(r == n && strlen(buf) == (size_t)n && contains(buf, expect_sub), __LINE__, what,
             "returned %d (size query %d), text %.300s", r, n, buf);
    full = malloc((size_t)n + 1);
    if (!full)
        die("out of memory");
    memcpy(full, buf, (size_t)n + 1);

    memset(buf, 'Z', sizeof buf);
    r = fn(buf, 1);
    snprintf(what, sizeof what, "%s len 1: writes only the NUL, returns the full length", name);
    check_at(r == n && buf[0] == '\0' && buf[1] == 'Z', __LINE__, what, "returned %d, buf[0]=%d buf[1]=%d",
             r, buf[0], buf[1]);

    memset(buf, 'Z', sizeof buf);
    r = fn(buf, (size_t)n);
    snprintf(what, sizeof what, "%s len n: truncated to n-1 bytes + NUL, returns n (>= len)", name);
    check_at(r == n && strlen(buf) == (size_t)n - 1 && memcmp(buf, full, (size_t)n - 1) == 0 &&
                 buf[n] == 'Z',
             __LINE__, what, "returned %d, strlen %lu", r, (unsigned long)strlen(buf));

    memset(buf, 'Z', sizeof buf);
    r = fn(buf, (size_t)n + 1);
    snprintf(what, sizeof what, "%s len n+1: the whole text fits exactly", name);
    check_at(r == n && strcmp(buf, full) == 0 && buf[n + 1] == 'Z', __LINE__, what, "returned %d", r);

    before = sim_request_count();
    snprintf(what, sizeof what, "%s(NULL, 5) gives BD_ERR_INVALID_ARGUMENT", name);
    check_rc_at(fn(NULL, 5), BD_ERR_INVALID_ARGUMENT, __LINE__, what);
    snprintf(what, sizeof what, "%s(NULL, 5) sends nothing", name);
    check_at(sim_request_count() == before, __LINE__, what, NULL);
    free(full);
}

static int app_state_current(char *buf, size_t len)
{
    return bd_app_state_json(BD_CURRENT_APP, buf, len);
}

static int application_state_current(char *buf, size_t len)
{
    return bd_application_state_json(BD_CURRENT_APP, buf, len);
}

static int container_id_main(char *buf, size_t len)
{
    return bd_container_id("main", buf, len);
}

static void test_text_functions(void)
{
    char p1[64];
    char p2[64];
    section("text out: snprintf rules for every text function");
    fresh();
    snprintf(p1, sizeof p1, "/v1/apps/%u", g_app_id);
    snprintf(p2, sizeof p2, "/v2/applications/%u/state", g_app_id);
    check_text_fn("bd_state_json", bd_state_json, "/v1/device", "\"os_version\":\"balenaOS 6.0.13\"");
    check_text_fn("bd_host_config_json", bd_host_config_json, "/v1/device/host-config",
                  "\"hostname\":\"device\"");
    check_text_fn("bd_app_state_json(BD_CURRENT_APP)", app_state_current, p1, "\"containerId\":\"");
    check_text_fn("bd_applications_state_json", bd_applications_state_json,
                  "/v2/applications/state", "\"myapp\"");
    check_text_fn("bd_application_state_json(BD_CURRENT_APP)", application_state_current, p2,
                  "\"commit\":\"7fc9c5bea8e361acd49886fe6cc1e1cd\"");
    check_text_fn("bd_state_status_json", bd_state_status_json, "/v2/state/status",
                  "\"appState\":\"applied\"");
    check_text_fn("bd_supervisor_version", bd_supervisor_version, "/v2/version", "19.0.5");
    check_text_fn("bd_container_ids_json", bd_container_ids_json, "/v2/containerId", "\"main\":\"");
    check_text_fn("bd_container_id(\"main\")", container_id_main, "/v2/containerId", "");
    check_text_fn("bd_device_name", bd_device_name, "/v2/device/name", "sim-device");
    check_text_fn("bd_device_tags_json", bd_device_tags_json, "/v2/device/tags", "[]");
    check_text_fn("bd_local_target_state_json", bd_local_target_state_json,
                  "/v2/local/target-state", "\"sim-device\"");
    check_text_fn("bd_device_info_json", bd_device_info_json, "/v2/local/device-info",
                  "\"deviceType\":\"raspberrypi4-64\"");
}

static void test_v1(void)
{
    char buf[4096];
    char id[128];
    char cid[80];
    char path[128];
    int n;
    long before;
    char *st;

    section("V1: ping, healthy, blink, reboot, shutdown, update, purge, restart, apps, device");
    fresh();
    st = sim_state();
    if (!json_string_field(st, "containerId", cid, sizeof cid))
        die("no containerId in /_sim/state");
    free(st);

    CHECK_RC(bd_ping(), BD_OK, "bd_ping");
    CHECK_RC(bd_healthy(), 1, "bd_healthy on a healthy device is 1");
    sim_set("{\"healthy\":false}");
    CHECK_RC(bd_healthy(), 0, "bd_healthy on an unhealthy device is 0");
    CHECK(bd_last_http_status() == 500, "unhealthy: bd_last_http_status() is 500");
    CHECK_WIRE("bd_healthy", "GET", "/v1/healthy", "", KEY_NONE);

    CHECK_RC(bd_blink(), BD_OK, "bd_blink");
    CHECK(bd_last_http_status() == 200, "bd_blink: HTTP 200");
    CHECK_WIRE("bd_blink", "POST", "/v1/blink", "", KEY_CURRENT);
    CHECK(sim_state_has("\"blink\""), "the simulator blinked");

    /* reboot / shutdown */
    CHECK_RC(bd_reboot(false), BD_OK, "bd_reboot(false) when unlocked");
    CHECK(bd_last_http_status() == 202, "bd_reboot: HTTP 202");
    CHECK_WIRE("bd_reboot(false)", "POST", "/v1/reboot", "{\"force\":false}", KEY_CURRENT);
    sim_set("{\"locked\":true,\"actions\":[]}");
    CHECK_RC(bd_reboot(false), BD_ERR_LOCKED, "bd_reboot(false) while locked");
    CHECK_RC(bd_reboot(true), BD_OK, "bd_reboot(true) while locked overrides the lock");
    CHECK_WIRE("bd_reboot(true)", "POST", "/v1/reboot", "{\"force\":true}", KEY_CURRENT);
    CHECK(sim_state_has("\"reboot(force)\"") && sim_state_has("\"locked\":false"),
          "the simulator rebooted with force and cleared its lock");
    sim_set("{\"locked\":true}");
    CHECK_RC(bd_shutdown(false), BD_ERR_LOCKED, "bd_shutdown(false) while locked");
    CHECK_WIRE("bd_shutdown(false)", "POST", "/v1/shutdown", "{\"force\":false}", KEY_CURRENT);
    CHECK_RC(bd_shutdown(true), BD_OK, "bd_shutdown(true) while locked");
    CHECK_WIRE("bd_shutdown(true)", "POST", "/v1/shutdown", "{\"force\":true}", KEY_CURRENT);
    CHECK(bd_last_http_status() == 202, "bd_shutdown: HTTP 202");
    CHECK_RC(bd_shutdown(false), BD_OK, "bd_shutdown(false) once the forced action cleared the lock");

    /* update: 202 or 204, never locked */
    sim_set("{\"locked\":true}");
    CHECK_RC(bd_update(false), BD_OK, "bd_update(false) (202 Accepted), even while locked");
    CHECK(bd_last_http_status() == 202, "bd_update(false): HTTP 202");
    CHECK_WIRE("bd_update(false)", "POST", "/v1/update", "{\"force\":false}", KEY_CURRENT);
    CHECK_RC(bd_update(true), BD_OK, "bd_update(true) (204 applied at once)");
    CHECK(bd_last_http_status() == 204, "bd_update(true): HTTP 204");
    CHECK_WIRE("bd_update(true)", "POST", "/v1/update", "{\"force\":true}", KEY_CURRENT);
    sim_set("{\"instant_updates\":true}");
    CHECK_RC(bd_update(false), BD_OK, "bd_update(false) with instant updates (204)");
    CHECK(bd_last_http_status() == 204, "instant updates: HTTP 204");
    fresh();

    /* purge / restart */
    snprintf(buf, sizeof buf, "{\"appId\":%u}", g_app_id);
    CHECK_RC(bd_purge(BD_CURRENT_APP), BD_OK, "bd_purge(BD_CURRENT_APP)");
    CHECK_WIRE("bd_purge(BD_CURRENT_APP)", "POST", "/v1/purge", buf, KEY_CURRENT);
    CHECK_RC(bd_restart(g_app_id), BD_OK, "bd_restart(app)");
    CHECK_WIRE("bd_restart(app)", "POST", "/v1/restart", buf, KEY_CURRENT);
    CHECK_RC(bd_purge(999999), BD_ERR_SERVER, "bd_purge(app not on the device) gives BD_ERR_SERVER");
    CHECK_WIRE("bd_purge(999999)", "POST", "/v1/purge", "{\"appId\":999999}", KEY_CURRENT);
    sim_set("{\"locked\":true}");
    CHECK_RC(bd_purge(g_app_id), BD_ERR_LOCKED, "bd_purge while locked");
    CHECK_RC(bd_restart(g_app_id), BD_ERR_LOCKED, "bd_restart while locked");
    sim_set("{\"locked\":false}");
    {
        char saved[32];
        snprintf(saved, sizeof saved, "%s", getenv("BALENA_APP_ID"));
        unsetenv("BALENA_APP_ID");
        before = sim_request_count();
        CHECK_RC(bd_purge(BD_CURRENT_APP), BD_ERR_NOT_CONFIGURED, "bd_purge(BD_CURRENT_APP) without BALENA_APP_ID");
        check_at(contains(bd_last_error(), "BALENA_APP_ID"), __LINE__,
                 "the error names BALENA_APP_ID", "%s", bd_last_error());
        CHECK_RC(bd_restart(BD_CURRENT_APP), BD_ERR_NOT_CONFIGURED, "bd_restart(BD_CURRENT_APP) without BALENA_APP_ID");
        CHECK_RC(bd_app_state_json(BD_CURRENT_APP, buf, sizeof buf), BD_ERR_NOT_CONFIGURED,
                 "bd_app_state_json(BD_CURRENT_APP) without BALENA_APP_ID");
        CHECK_NOTHING_SENT(before, "BD_CURRENT_APP without an app id sends nothing");
        setenv("RESIN_APP_ID", saved, 1);
        CHECK_RC(bd_restart(BD_CURRENT_APP), BD_OK, "bd_restart(BD_CURRENT_APP) from RESIN_APP_ID");
        snprintf(buf, sizeof buf, "{\"appId\":%s}", saved);
        CHECK_WIRE("RESIN_APP_ID fallback", "POST", "/v1/restart", buf, KEY_CURRENT);
        unsetenv("RESIN_APP_ID");
        setenv("BALENA_APP_ID", saved, 1);
    }

    /* apps */
    n = bd_app_state_json(g_app_id, buf, sizeof buf);
    check_at(n > 0 && contains(buf, cid) && contains(buf, "\"commit\":\"7fc9c5bea8e361acd49886fe6cc1e1cd\""),
             __LINE__, "bd_app_state_json(app) returns the app with its container id",
             "rc %d: %s", n, buf);
    snprintf(path, sizeof path, "/v1/apps/%u", g_app_id);
    CHECK_WIRE("bd_app_state_json", "GET", path, "", KEY_CURRENT);
    CHECK_RC(bd_app_state_json(999999, buf, sizeof buf), BD_ERR_BAD_REQUEST,
             "bd_app_state_json(unknown app) gives BD_ERR_BAD_REQUEST");
    sim_set("{\"scoped_keys\":[{\"key\":\"scopedkey777\",\"apps\":[777]}]}");
    snprintf(g_key, sizeof g_key, "%s", "scopedkey777");
    CHECK_RC(bd_init(g_addr, g_key), BD_OK, "bd_init with a key scoped to another app");
    CHECK_RC(bd_app_state_json(g_app_id, buf, sizeof buf), BD_ERR_UNAUTHORIZED,
             "bd_app_state_json(app out of the key's scope) gives BD_ERR_UNAUTHORIZED");
    CHECK_RC(bd_application_state_json(g_app_id, buf, sizeof buf), BD_ERR_HTTP,
             "bd_application_state_json(app out of the key's scope) gives BD_ERR_HTTP (409)");
    CHECK(bd_last_http_status() == 409, "out of scope on v2: HTTP 409");
    fresh();

    /* start / stop */
    n = bd_stop_app(g_app_id, false, id, sizeof id);
    check_at(n == 64 && strcmp(id, cid) == 0, __LINE__, "bd_stop_app returns the container id",
             "rc %d, id %s, expected %s", n, id, cid);
    snprintf(path, sizeof path, "/v1/apps/%u/stop", g_app_id);
    CHECK_WIRE("bd_stop_app(false)", "POST", path, "{\"force\":false}", KEY_CURRENT);
    CHECK(bd_state_json(buf, sizeof buf) > 0 && contains(buf, "\"status\":\"exited\""),
          "after bd_stop_app the device status is exited");
    n = bd_start_app(g_app_id, id, sizeof id);
    check_at(n == 64 && strcmp(id, cid) == 0, __LINE__, "bd_start_app returns the container id",
             "rc %d, id %s", n, id);
    snprintf(path, sizeof path, "/v1/apps/%u/start", g_app_id);
    CHECK_WIRE("bd_start_app (no body)", "POST", path, "", KEY_CURRENT);
    CHECK_RC(bd_start_app(g_app_id, NULL, 0), 64, "bd_start_app(app, NULL, 0) returns the id's length");
    CHECK_RC(bd_stop_app(BD_CURRENT_APP, false, NULL, 0), 64, "bd_stop_app(BD_CURRENT_APP, false, NULL, 0)");
    memset(id, 'Z', sizeof id);
    CHECK_RC(bd_start_app(g_app_id, id, 9), 64, "bd_start_app with len 9 returns the full length");
    CHECK(strlen(id) == 8 && strncmp(id, cid, 8) == 0 && id[9] == 'Z', "bd_start_app with len 9 wrote 8 bytes + NUL");
    sim_set("{\"locked\":true}");
    CHECK_RC(bd_stop_app(g_app_id, false, id, sizeof id), BD_ERR_LOCKED, "bd_stop_app(false) while locked");
    CHECK_RC(bd_start_app(g_app_id, id, sizeof id), 64, "bd_start_app while locked (start takes no lock)");
    CHECK_RC(bd_stop_app(g_app_id, true, id, sizeof id), 64, "bd_stop_app(true) while locked");
    snprintf(path, sizeof path, "/v1/apps/%u/stop", g_app_id);
    CHECK_WIRE("bd_stop_app(true)", "POST", path, "{\"force\":true}", KEY_CURRENT);
    CHECK_RC(bd_stop_app(999999, false, id, sizeof id), BD_ERR_SERVER, "bd_stop_app(app not on the device) gives BD_ERR_SERVER");
    sim_set("{\"multi_container\":true}");
    CHECK_RC(bd_start_app(g_app_id, id, sizeof id), BD_ERR_BAD_REQUEST,
             "bd_start_app on a multi-container app gives BD_ERR_BAD_REQUEST");
    before = sim_request_count();
    CHECK_RC(bd_start_app(g_app_id, NULL, 3), BD_ERR_INVALID_ARGUMENT, "bd_start_app(app, NULL, 3)");
    CHECK_RC(bd_stop_app(g_app_id, false, NULL, 3), BD_ERR_INVALID_ARGUMENT, "bd_stop_app(app, false, NULL, 3)");
    CHECK_RC(bd_regenerate_api_key(NULL, 3), BD_ERR_INVALID_ARGUMENT, "bd_regenerate_api_key(NULL, 3)");
    CHECK_NOTHING_SENT(before, "NULL buffers with len > 0 send nothing");
    fresh();

    /* host config */
    n = bd_host_config_json(buf, sizeof buf);
    CHECK(n > 0 && contains(buf, "\"network\""), "bd_host_config_json returns the network object");
    CHECK_RC(bd_set_host_config_json("{\"network\":{\"hostname\":\"newname\"}}"), BD_OK,
             "bd_set_host_config_json changes the hostname");
    CHECK_WIRE("bd_set_host_config_json", "PATCH", "/v1/device/host-config",
               "{\"network\":{\"hostname\":\"newname\"}}", KEY_CURRENT);
    CHECK(bd_host_config_json(buf, sizeof buf) > 0 && contains(buf, "\"hostname\":\"newname\""),
          "the new hostname reads back");
    sim_set("{\"locked\":true}");
    CHECK_RC(bd_set_host_config_json("{\"network\":{\"hostname\":\"other\"}}"), BD_ERR_LOCKED,
             "bd_set_host_config_json while locked without the caller's force");
    CHECK_RC(bd_set_host_config_json("{\"network\":{\"hostname\":\"other\"},\"force\":true}"), BD_OK,
             "bd_set_host_config_json with the caller's own force");
    CHECK_WIRE("host config sent as given, force untouched", "PATCH", "/v1/device/host-config",
               "{\"network\":{\"hostname\":\"other\"},\"force\":true}", KEY_CURRENT);
    CHECK_RC(bd_set_host_config_json("{\"foo\":1}"), BD_ERR_BAD_REQUEST,
             "bd_set_host_config_json without a network object gives BD_ERR_BAD_REQUEST");
    before = sim_request_count();
    CHECK_RC(bd_set_host_config_json(NULL), BD_ERR_INVALID_ARGUMENT, "bd_set_host_config_json(NULL)");
    CHECK_RC(bd_set_host_config_json("not json"), BD_ERR_INVALID_ARGUMENT, "bd_set_host_config_json(\"not json\")");
    CHECK_RC(bd_set_host_config_json("[1]"), BD_ERR_INVALID_ARGUMENT, "bd_set_host_config_json(\"[1]\") (not an object)");
    CHECK_RC(bd_set_host_config_json("{\"network\":"), BD_ERR_INVALID_ARGUMENT, "bd_set_host_config_json(truncated JSON)");
    CHECK_RC(bd_set_host_config_json("{\"a\":\"\xff\"}"), BD_ERR_INVALID_ARGUMENT, "bd_set_host_config_json(non-UTF-8)");
    CHECK_NOTHING_SENT(before, "malformed host config sends nothing");
    fresh();

    /* bd_state: typed struct */
    {
        bd_device_state ds;
        bd_device_state sentinel;
        char js[2048];
        char longip[301];
        char longcommit[101];
        char os[80];
        memset(&ds, 0x5A, sizeof ds);
        CHECK_RC(bd_state(&ds), BD_OK, "bd_state");
        CHECK_WIRE("bd_state", "GET", "/v1/device", "", KEY_CURRENT);
        CHECK(strcmp(ds.status, "Idle") == 0, "bd_state: status Idle");
        CHECK(strcmp(ds.commit, "7fc9c5bea8e361acd49886fe6cc1e1cd") == 0, "bd_state: commit");
        CHECK(strcmp(ds.os_version, "balenaOS 6.0.13") == 0, "bd_state: os_version");
        CHECK(strcmp(ds.supervisor_version, "19.0.5") == 0, "bd_state: supervisor_version");
        CHECK(strcmp(ds.ip_address, "10.0.0.2") == 0, "bd_state: ip_address");
        CHECK(strcmp(ds.mac_address, "02:42:AC:11:00:02") == 0, "bd_state: mac_address");
        CHECK(ds.download_progress == -1, "bd_state: download_progress null is -1");
        CHECK(ds.api_port == 48484, "bd_state: api_port");
        CHECK(!ds.update_pending && !ds.update_downloaded && !ds.update_failed, "bd_state: update flags false");

        memset(longip, '1', 300);
        longip[300] = '\0';
        memset(longcommit, 'c', 100);
        longcommit[100] = '\0';
        memset(os, 'a', 62);
        strcpy(os + 62, "\xc3\xa9"); /* 62 bytes + a 2-byte character = 64 bytes */
        snprintf(js, sizeof js,
                 "{\"device\":{\"status\":\"Downloading\",\"download_progress\":84,"
                 "\"api_port\":null,\"update_pending\":true,\"update_failed\":null,"
                 "\"ip_address\":\"%s\",\"commit\":\"%s\",\"os_version\":\"%s\"}}",
                 longip, longcommit, os);
        sim_set(js);
        memset(&ds, 0x5A, sizeof ds);
        CHECK_RC(bd_state(&ds), BD_OK, "bd_state with long, null and missing fields");
        CHECK(strcmp(ds.status, "Downloading") == 0 && ds.download_progress == 84,
              "bd_state: Downloading at 84%");
        CHECK(strlen(ds.ip_address) == 255 && ds.ip_address[255] == '\0',
              "bd_state: a 300-byte ip_address is truncated to 255 bytes + NUL");
        CHECK(strlen(ds.commit) == 71, "bd_state: a 100-byte commit is truncated to 71 bytes + NUL");
        check_at(strlen(ds.os_version) == 62, __LINE__,
                 "bd_state: truncation never splits a UTF-8 character", "strlen %lu",
                 (unsigned long)strlen(ds.os_version));
        CHECK(ds.mac_address[0] == '\0' && ds.supervisor_version[0] == '\0',
              "bd_state: missing strings are \"\"");
        CHECK(ds.api_port == 0, "bd_state: api_port null is 0");
        CHECK(ds.update_pending && !ds.update_downloaded && !ds.update_failed,
              "bd_state: booleans true / missing / null");

        sim_set("{\"device\":{\"api_port\":\"not a number\"}}");
        memset(&ds, 0x5A, sizeof ds);
        memset(&sentinel, 0x5A, sizeof sentinel);
        CHECK_RC(bd_state(&ds), BD_ERR_INVALID_RESPONSE, "bd_state with a field of the wrong type");
        CHECK(memcmp(&ds, &sentinel, sizeof ds) == 0, "bd_state writes nothing on error");
        before = sim_request_count();
        CHECK_RC(bd_state(NULL), BD_ERR_INVALID_ARGUMENT, "bd_state(NULL)");
        CHECK_NOTHING_SENT(before, "bd_state(NULL) sends nothing");
    }
    fresh();

    /* regenerate the key: the client switches at once */
    {
        char newkey[128];
        char simkey[128];
        char old[256];
        snprintf(old, sizeof old, "%s", g_key);
        n = bd_regenerate_api_key(newkey, sizeof newkey);
        check_at(n >= 16 && (size_t)n == strlen(newkey), __LINE__,
                 "bd_regenerate_api_key returns the new key and its length", "rc %d", n);
        CHECK_WIRE("bd_regenerate_api_key", "POST", "/v1/regenerate-api-key", "", KEY_CURRENT);
        st = sim_state(); /* the suite runs with the global key (see c_api.rs) */
        json_string_field(st, "global_key", simkey, sizeof simkey);
        free(st);
        CHECK(strcmp(newkey, simkey) == 0 && strcmp(newkey, old) != 0,
              "the returned key is the supervisor's new key");
        snprintf(g_key, sizeof g_key, "%s", newkey);
        CHECK_RC(bd_blink(), BD_OK, "bd_blink after the regenerate uses the new key");
        CHECK_WIRE("the new key is on the wire", "POST", "/v1/blink", "", KEY_CURRENT);
        n = bd_regenerate_api_key(NULL, 0);
        check_at(n == (int)strlen(newkey), __LINE__,
                 "bd_regenerate_api_key(NULL, 0) regenerates and returns the length", "rc %d", n);
        st = sim_state();
        json_string_field(st, "global_key", simkey, sizeof simkey);
        free(st);
        snprintf(g_key, sizeof g_key, "%s", simkey);
        CHECK_RC(bd_blink(), BD_OK, "bd_blink after a regenerate into (NULL, 0)");
        CHECK_WIRE("the newest key is on the wire", "POST", "/v1/blink", "", KEY_CURRENT);
    }
    fresh();
}

static void test_v2(void)
{
    char buf[8192];
    char path[128];
    char worker_cid[80];
    bool en = false;
    bool co = false;
    long before;
    int n;

    section("V2: applications, services, version, container ids, name, tags, vpn, volumes, local mode");
    fresh();

    /* applications */
    n = bd_applications_state_json(buf, sizeof buf);
    check_at(n > 0 && contains(buf, "\"myapp\"") && contains(buf, "\"appId\":1234"), __LINE__,
             "bd_applications_state_json lists myapp", "%s", buf);
    n = bd_application_state_json(g_app_id, buf, sizeof buf);
    CHECK(n > 0 && contains(buf, "\"local\""), "bd_application_state_json(app)");
    n = bd_state_status_json(buf, sizeof buf);
    CHECK(n > 0 && contains(buf, "\"status\":\"success\"") && contains(buf, "\"containers\""),
          "bd_state_status_json");

    /* services by name (single container: the one service is acted on) */
    snprintf(path, sizeof path, "/v2/applications/%u/restart-service", g_app_id);
    CHECK_RC(bd_restart_service(g_app_id, "main", false), BD_OK, "bd_restart_service(app, main, false)");
    CHECK_WIRE_SUB("bd_restart_service", "POST", path, "\"serviceName\":\"main\"", "\"force\":false");
    snprintf(path, sizeof path, "/v2/applications/%u/stop-service", g_app_id);
    CHECK_RC(bd_stop_service(BD_CURRENT_APP, "main", false), BD_OK, "bd_stop_service(BD_CURRENT_APP, main, false)");
    CHECK_WIRE_SUB("bd_stop_service", "POST", path, "\"serviceName\":\"main\"", "\"force\":false");
    CHECK(sim_state_has("\"stop-service 1234/main\""), "the simulator stopped main");
    snprintf(path, sizeof path, "/v2/applications/%u/start-service", g_app_id);
    CHECK_RC(bd_start_service(g_app_id, "main", true), BD_OK, "bd_start_service(app, main, true)");
    CHECK_WIRE_SUB("bd_start_service", "POST", path, "\"serviceName\":\"main\"", "\"force\":true");
    CHECK_RC(bd_restart_service(g_app_id, "na\xc3\xafve \"svc\"", false), BD_OK,
             "bd_restart_service with a UTF-8 name and quotes");
    CHECK_WIRE_SUB("service name is JSON-escaped", "POST", "/v2/applications/1234/restart-service",
                   "\"serviceName\":\"na\xc3\xafve \\\"svc\\\"\"", "\"force\":false");

    sim_set("{\"locked\":true}");
    CHECK_RC(bd_restart_service(g_app_id, "main", false), BD_ERR_LOCKED, "bd_restart_service while locked");
    CHECK_RC(bd_stop_service(g_app_id, "main", false), BD_ERR_LOCKED, "bd_stop_service while locked");
    CHECK_RC(bd_start_service(g_app_id, "main", false), BD_OK, "bd_start_service while locked (never LOCKED)");
    CHECK_RC(bd_stop_service(g_app_id, "main", true), BD_OK, "bd_stop_service(force) while locked");
    CHECK_RC(bd_restart_service(999999, "main", false), BD_ERR_SERVER,
             "bd_restart_service(app not on the device) gives BD_ERR_SERVER");

    before = sim_request_count();
    CHECK_RC(bd_restart_service(g_app_id, NULL, false), BD_ERR_INVALID_ARGUMENT, "bd_restart_service(app, NULL)");
    CHECK_RC(bd_stop_service(g_app_id, "", false), BD_ERR_INVALID_ARGUMENT, "bd_stop_service(app, \"\")");
    CHECK_RC(bd_start_service(g_app_id, "a\r\nb", false), BD_ERR_INVALID_ARGUMENT, "bd_start_service(app, \"a\\r\\nb\")");
    CHECK_RC(bd_restart_service(g_app_id, "\xff", false), BD_ERR_INVALID_ARGUMENT, "bd_restart_service(app, non-UTF-8)");
    CHECK_NOTHING_SENT(before, "bad service names send nothing");
    fresh();

    /* services by image, multi-container */
    sim_set("{\"multi_container\":true}");
    snprintf(path, sizeof path, "/v2/applications/%u/stop-service", g_app_id);
    CHECK_RC(bd_stop_service_by_image(g_app_id, 1002, false), BD_OK, "bd_stop_service_by_image(app, 1002, false)");
    CHECK_WIRE("bd_stop_service_by_image", "POST", path, "{\"imageId\":1002,\"force\":false}", KEY_CURRENT);
    CHECK(sim_state_has("\"stop-service 1234/worker\""), "the simulator stopped worker (image 1002)");
    snprintf(path, sizeof path, "/v2/applications/%u/start-service", g_app_id);
    CHECK_RC(bd_start_service_by_image(g_app_id, 1002, false), BD_OK, "bd_start_service_by_image(app, 1002, false)");
    CHECK_WIRE("bd_start_service_by_image", "POST", path, "{\"imageId\":1002,\"force\":false}", KEY_CURRENT);
    snprintf(path, sizeof path, "/v2/applications/%u/restart-service", g_app_id);
    CHECK_RC(bd_restart_service_by_image(BD_CURRENT_APP, 1001, true), BD_OK, "bd_restart_service_by_image(BD_CURRENT_APP, 1001, true)");
    CHECK_WIRE("bd_restart_service_by_image", "POST", path, "{\"imageId\":1001,\"force\":true}", KEY_CURRENT);
    CHECK_RC(bd_restart_service_by_image(g_app_id, 9999, false), BD_ERR_NOT_FOUND,
             "bd_restart_service_by_image(unknown image) gives BD_ERR_NOT_FOUND");
    CHECK_RC(bd_stop_service_by_image(g_app_id, 9999, false), BD_ERR_NOT_FOUND,
             "bd_stop_service_by_image(unknown image) gives BD_ERR_NOT_FOUND");
    CHECK_RC(bd_start_service_by_image(g_app_id, 9999, false), BD_ERR_NOT_FOUND,
             "bd_start_service_by_image(unknown image) gives BD_ERR_NOT_FOUND");
    CHECK_RC(bd_restart_service(g_app_id, "worker", false), BD_OK, "bd_restart_service(app, worker)");
    CHECK_RC(bd_stop_service(g_app_id, "nosuch", false), BD_ERR_NOT_FOUND, "bd_stop_service(unknown service)");
    CHECK_RC(bd_start_service(g_app_id, "nosuch", false), BD_ERR_NOT_FOUND, "bd_start_service(unknown service)");
    sim_set("{\"locked\":true}");
    CHECK_RC(bd_restart_service_by_image(g_app_id, 1001, false), BD_ERR_LOCKED, "bd_restart_service_by_image while locked");
    CHECK_RC(bd_stop_service_by_image(g_app_id, 1001, false), BD_ERR_LOCKED, "bd_stop_service_by_image while locked");
    CHECK_RC(bd_start_service_by_image(g_app_id, 1001, false), BD_OK, "bd_start_service_by_image while locked (never LOCKED)");
    CHECK_RC(bd_stop_service_by_image(999999, 1001, false), BD_ERR_SERVER, "bd_stop_service_by_image(app not on the device)");

    /* container ids */
    n = bd_container_ids_json(buf, sizeof buf);
    CHECK(n > 0 && contains(buf, "\"main\":\"") && contains(buf, "\"worker\":\""),
          "bd_container_ids_json lists main and worker");
    n = bd_container_id("worker", worker_cid, sizeof worker_cid);
    CHECK(n == 64 && contains(buf, worker_cid), "bd_container_id(worker) matches bd_container_ids_json");
    check_wire_at(__LINE__, "bd_container_id(worker)", "GET", "/v2/containerId", "", NULL, NULL, KEY_CURRENT);
    {
        sim_req r;
        sim_last(&r);
        check_at(contains(r.query, "\"service\":\"worker\""), __LINE__,
                 "bd_container_id sends ?service=worker", "query %s", r.query);
    }
    CHECK_RC(bd_container_id("my svc&x=1", buf, sizeof buf), BD_ERR_SERVER,
             "bd_container_id(unknown service) gives BD_ERR_SERVER (503)");
    {
        sim_req r;
        sim_last(&r);
        check_at(contains(r.query, "\"service\":\"my svc&x=1\"") && !contains(r.query, "\"x\""),
                 __LINE__, "bd_container_id percent-encodes the service name", "query %s raw %s",
                 r.query, r.raw_query);
    }
    before = sim_request_count();
    CHECK_RC(bd_container_id(NULL, buf, sizeof buf), BD_ERR_INVALID_ARGUMENT, "bd_container_id(NULL)");
    CHECK_RC(bd_container_id("", buf, sizeof buf), BD_ERR_INVALID_ARGUMENT, "bd_container_id(\"\")");
    CHECK_RC(bd_container_id("a\nb", buf, sizeof buf), BD_ERR_INVALID_ARGUMENT, "bd_container_id(\"a\\nb\")");
    CHECK_RC(bd_container_id("main", NULL, 4), BD_ERR_INVALID_ARGUMENT, "bd_container_id(main, NULL, 4)");
    CHECK_NOTHING_SENT(before, "bad container id arguments send nothing");
    fresh();

    /* restart / purge app */
    snprintf(path, sizeof path, "/v2/applications/%u/restart", g_app_id);
    CHECK_RC(bd_restart_app(BD_CURRENT_APP, false), BD_OK, "bd_restart_app(BD_CURRENT_APP, false)");
    CHECK_WIRE("bd_restart_app", "POST", path, "{\"force\":false}", KEY_CURRENT);
    snprintf(path, sizeof path, "/v2/applications/%u/purge", g_app_id);
    CHECK_RC(bd_purge_app(g_app_id, false), BD_OK, "bd_purge_app(app, false)");
    CHECK_WIRE("bd_purge_app", "POST", path, "{\"force\":false}", KEY_CURRENT);
    CHECK(sim_state_has("\"purge 1234\"") && sim_state_has("\"restart 1234\""),
          "the simulator restarted and purged the app");
    sim_set("{\"locked\":true}");
    CHECK_RC(bd_restart_app(g_app_id, false), BD_ERR_LOCKED, "bd_restart_app while locked");
    CHECK_RC(bd_purge_app(g_app_id, false), BD_ERR_LOCKED, "bd_purge_app while locked");
    CHECK_RC(bd_purge_app(g_app_id, true), BD_OK, "bd_purge_app(force) while locked");
    CHECK_WIRE("bd_purge_app(force)", "POST", path, "{\"force\":true}", KEY_CURRENT);
    CHECK_RC(bd_restart_app(999999, false), BD_ERR_SERVER, "bd_restart_app(app not on the device)");
    CHECK_RC(bd_purge_app(999999, true), BD_ERR_SERVER, "bd_purge_app(app not on the device)");

    /* version, name */
    sim_set("{\"supervisor_version\":\"20.1.2\",\"device_name\":\"b\xc3\xbcro-1\"}");
    n = bd_supervisor_version(buf, sizeof buf);
    CHECK(n == 6 && strcmp(buf, "20.1.2") == 0, "bd_supervisor_version follows the supervisor");
    CHECK_WIRE("bd_supervisor_version", "GET", "/v2/version", "", KEY_CURRENT);
    n = bd_device_name(buf, sizeof buf);
    CHECK(n == 7 && strcmp(buf, "b\xc3\xbcro-1") == 0, "bd_device_name returns UTF-8 and its byte length");
    CHECK_WIRE("bd_device_name", "GET", "/v2/device/name", "", KEY_CURRENT);

    /* tags */
    CHECK_RC(bd_set_device_tags_json("{\"env\":\"prod\",\"rack\":\"7\"}"), BD_OK, "bd_set_device_tags_json");
    CHECK(bd_last_http_status() == 202, "bd_set_device_tags_json: HTTP 202");
    CHECK_WIRE("bd_set_device_tags_json", "PATCH", "/v2/device/tags", "{\"env\":\"prod\",\"rack\":\"7\"}", KEY_CURRENT);
    n = bd_device_tags_json(buf, sizeof buf);
    check_at(n > 0 && buf[0] == '[' && contains(buf, "\"name\":\"env\"") && contains(buf, "\"value\":\"prod\""),
             __LINE__, "bd_device_tags_json returns the tags array", "%s", buf);
    CHECK_RC(bd_set_device_tags_json("{\"bad name\":\"x\"}"), BD_ERR_BAD_REQUEST,
             "bd_set_device_tags_json with white space in a name gives BD_ERR_BAD_REQUEST");
    CHECK_RC(bd_set_device_tags_json("{\"n\":1}"), BD_ERR_BAD_REQUEST,
             "bd_set_device_tags_json with a number value gives BD_ERR_BAD_REQUEST");
    sim_set("{\"tags_api_down\":true}");
    CHECK_RC(bd_set_device_tags_json("{\"a\":\"b\"}"), BD_ERR_SERVER, "bd_set_device_tags_json with the balena API down");
    before = sim_request_count();
    CHECK_RC(bd_set_device_tags_json(NULL), BD_ERR_INVALID_ARGUMENT, "bd_set_device_tags_json(NULL)");
    CHECK_RC(bd_set_device_tags_json("[\"a\"]"), BD_ERR_INVALID_ARGUMENT, "bd_set_device_tags_json(array)");
    CHECK_RC(bd_set_device_tags_json("{oops}"), BD_ERR_INVALID_ARGUMENT, "bd_set_device_tags_json(malformed)");
    CHECK_NOTHING_SENT(before, "malformed tags send nothing");

    /* vpn */
    CHECK_RC(bd_vpn_status(&en, &co), BD_OK, "bd_vpn_status");
    CHECK(en && co, "bd_vpn_status: enabled and connected");
    CHECK_WIRE("bd_vpn_status", "GET", "/v2/device/vpn", "", KEY_CURRENT);
    sim_set("{\"vpn_connected\":false}");
    CHECK_RC(bd_vpn_status(&en, &co), BD_OK, "bd_vpn_status after the VPN dropped");
    CHECK(en && !co, "bd_vpn_status: enabled, not connected");
    before = sim_request_count();
    CHECK_RC(bd_vpn_status(NULL, &co), BD_ERR_INVALID_ARGUMENT, "bd_vpn_status(NULL, &c)");
    CHECK_RC(bd_vpn_status(&en, NULL), BD_ERR_INVALID_ARGUMENT, "bd_vpn_status(&e, NULL)");
    CHECK_NOTHING_SENT(before, "bd_vpn_status with NULL sends nothing");
    en = true;
    co = true;
    CHECK_RC(bd_init(g_addr, "WrongKey42"), BD_OK, "bd_init with a wrong key");
    snprintf(g_key, sizeof g_key, "%s", "WrongKey42");
    CHECK_RC(bd_vpn_status(&en, &co), BD_ERR_UNAUTHORIZED, "bd_vpn_status with a wrong key");
    CHECK(en && co, "bd_vpn_status writes nothing on error");
    fresh();

    /* cleanup volumes */
    CHECK_RC(bd_cleanup_volumes(), BD_OK, "bd_cleanup_volumes");
    CHECK_WIRE("bd_cleanup_volumes", "GET", "/v2/cleanup-volumes", "", KEY_CURRENT);
    CHECK(sim_state_has("\"cleanup-volumes\""), "the simulator cleaned up volumes");

    /* device info */
    n = bd_device_info_json(buf, sizeof buf);
    CHECK(n > 0 && contains(buf, "\"arch\":\"aarch64\""), "bd_device_info_json");

    /* local target state */
    {
        const char *target = "{\"local\":{\"name\":\"local-dev\",\"config\":{},\"apps\":{}},"
                             "\"dependent\":{\"apps\":[],\"devices\":[]}}";
        CHECK_RC(bd_set_local_target_state_json(target), BD_ERR_BAD_REQUEST,
                 "bd_set_local_target_state_json outside local mode gives BD_ERR_BAD_REQUEST");
        check_at(contains(bd_last_error(), "local mode"), __LINE__, "the error says why", "%s",
                 bd_last_error());
        sim_set("{\"local_mode\":true}");
        CHECK_RC(bd_set_local_target_state_json(target), BD_OK, "bd_set_local_target_state_json in local mode");
        CHECK_WIRE("bd_set_local_target_state_json", "POST", "/v2/local/target-state", target, KEY_CURRENT);
        n = bd_local_target_state_json(buf, sizeof buf);
        check_at(n > 0 && contains(buf, "\"name\":\"local-dev\"") && buf[0] == '{', __LINE__,
                 "bd_local_target_state_json returns the state just set", "%s", buf);
        CHECK_RC(bd_set_local_target_state_json("{\"local\":{\"name\":\"x\",\"config\":{\"A\":1},\"apps\":{}}}"),
                 BD_ERR_BAD_REQUEST,
                 "bd_set_local_target_state_json with an invalid state");
        before = sim_request_count();
        CHECK_RC(bd_set_local_target_state_json(NULL), BD_ERR_INVALID_ARGUMENT, "bd_set_local_target_state_json(NULL)");
        CHECK_RC(bd_set_local_target_state_json("3"), BD_ERR_INVALID_ARGUMENT, "bd_set_local_target_state_json(\"3\")");
        CHECK_NOTHING_SENT(before, "malformed target state sends nothing");
    }
    fresh();
}

static void test_streams(void)
{
    lines_ctx c;
    long before;
    long t0;
    int rc;
    int i;
    int ordered = 1;
    section("streams: bd_journal_logs, bd_local_logs");
    fresh();

    memset(&c, 0, sizeof c);
    CHECK_RC(bd_journal_logs("{\"count\":5,\"format\":\"json\"}", on_line, &c), BD_OK,
             "bd_journal_logs({count:5, format:json})");
    CHECK(c.count == 5 && c.bad == 0, "the callback got 5 NUL-terminated lines without newlines");
    for (i = 0; i < 5 && i < c.count; i++) {
        char want[64];
        snprintf(want, sizeof want, "\"MESSAGE\":\"line %d\"", i + 1);
        if (!contains(c.lines[i], want) || c.lines[i][0] != '{')
            ordered = 0;
    }
    check_at(ordered, __LINE__, "journal lines are whole JSON entries, in order",
             "first line: %s", c.lines[0]);
    CHECK_WIRE("bd_journal_logs", "POST", "/v2/journal-logs", "{\"count\":5,\"format\":\"json\"}", KEY_CURRENT);

    memset(&c, 0, sizeof c);
    CHECK_RC(bd_journal_logs("{\"count\":3}", on_line, &c), BD_OK, "bd_journal_logs({count:3}) short format");
    check_at(c.count == 3 && contains(c.lines[2], "balena-supervisor[1]: line 3"), __LINE__,
             "short-format lines arrive whole", "count %d, third: %s", c.count, c.lines[2]);

    memset(&c, 0, sizeof c);
    c.stop_after = 3;
    CHECK_RC(bd_journal_logs("{\"count\":100}", on_line, &c), BD_OK,
             "bd_journal_logs stopped early by the callback returns BD_OK");
    CHECK(c.count == 3, "the callback was not called after it asked to stop");
    CHECK_RC(bd_ping(), BD_OK, "the next call works after a stopped stream");

    memset(&c, 0, sizeof c);
    c.stop_after = 3;
    CHECK_RC(bd_journal_logs("{\"follow\":true,\"count\":2}", on_line, &c), BD_OK,
             "bd_journal_logs follow: lines are delivered as they arrive, stop after 3");
    CHECK(c.count == 3 && contains(c.lines[2], "line 3"), "the followed line arrived");

    before = sim_request_count();
    CHECK_RC(bd_journal_logs(NULL, on_line, &c), BD_ERR_INVALID_ARGUMENT, "bd_journal_logs(NULL options)");
    CHECK_RC(bd_journal_logs("{}", NULL, &c), BD_ERR_INVALID_ARGUMENT, "bd_journal_logs(NULL callback)");
    CHECK_RC(bd_journal_logs("[1]", on_line, &c), BD_ERR_INVALID_ARGUMENT, "bd_journal_logs(options not an object)");
    CHECK_RC(bd_journal_logs("{bad", on_line, &c), BD_ERR_INVALID_ARGUMENT, "bd_journal_logs(malformed options)");
    CHECK_RC(bd_local_logs(NULL, &c), BD_ERR_INVALID_ARGUMENT, "bd_local_logs(NULL callback)");
    CHECK_NOTHING_SENT(before, "bad stream arguments send nothing");

    memset(&c, 0, sizeof c);
    c.stop_after = 1;
    CHECK_RC(bd_local_logs(on_line, &c), BD_OK, "bd_local_logs stopped after the first line");
    check_at(c.count == 1 && contains(c.lines[0], "Streaming logs"), __LINE__,
             "the first local log line is \"Streaming logs\"", "count %d: %s", c.count, c.lines[0]);
    CHECK_WIRE("bd_local_logs", "GET", "/v2/local/logs", "", KEY_CURRENT);

    /* The app's lines come only in local mode (a managed device sends the
       first line and then nothing). */
    sim_set("{\"local_mode\":true}");
    memset(&c, 0, sizeof c);
    c.stop_after = 2;
    CHECK_RC(bd_local_logs(on_line, &c), BD_OK, "bd_local_logs stopped after two lines");
    check_at(c.count == 2 && contains(c.lines[1], "\"message\":\"log line 1 from main\""), __LINE__,
             "the second local log line is the first service line", "%s", c.lines[1]);
    sim_set("{\"local_mode\":false}");

    /* Silence is not a request timeout: with no stream timeout (the
       default) a quiet stream outlives bd_set_timeout_ms and ends only when
       bd_stop_streams is called from another thread. */
    CHECK_RC(bd_set_timeout_ms((uint32_t)(300 * g_scale)), BD_OK, "bd_set_timeout_ms(300)");
    {
        pthread_t stopper;
        long wait_ms = 900 * g_scale;
        memset(&c, 0, sizeof c);
        c.stop_after = 4;
        if (pthread_create(&stopper, NULL, stop_streams_later, &wait_ms) != 0)
            die("pthread_create failed");
        t0 = now_ms();
        rc = bd_local_logs(on_line, &c);
        pthread_join(stopper, NULL);
        CHECK_RC(rc, BD_OK, "a quiet bd_local_logs ends with BD_OK when bd_stop_streams is called");
        check_at(c.count == 1, __LINE__, "the quiet stream delivered its first line only", "count %d",
                 c.count);
        check_at(now_ms() - t0 >= wait_ms - 50 && now_ms() - t0 < wait_ms + 1000 * g_scale, __LINE__,
                 "it waited past the request timeout and stopped soon after bd_stop_streams",
                 "took %ld ms, stop after %ld", now_ms() - t0, wait_ms);
    }
    CHECK_RC(bd_ping(), BD_OK, "bd_stop_streams does not affect later calls");
    memset(&c, 0, sizeof c);
    c.stop_after = 1;
    CHECK_RC(bd_local_logs(on_line, &c), BD_OK, "a stream started after bd_stop_streams runs");
    CHECK(c.count == 1, "the later stream delivered its line");

    /* A stream timeout: silence longer than it is BD_ERR_TIMEOUT. */
    CHECK_RC(bd_set_stream_timeout_ms((uint32_t)(500 * g_scale)), BD_OK, "bd_set_stream_timeout_ms(500)");
    /* stop_after: a stream that does not stall fails here instead of
     * running forever. */
    memset(&c, 0, sizeof c);
    c.stop_after = 4;
    t0 = now_ms();
    rc = bd_local_logs(on_line, &c);
    CHECK_RC(rc, BD_ERR_TIMEOUT, "bd_local_logs gives BD_ERR_TIMEOUT when the stream stalls");
    check_at(c.count == 1, __LINE__, "the stall came after the first line (mid-stream)", "count %d",
             c.count);
    check_at(now_ms() - t0 < g_log_interval_ms - 100, __LINE__,
             "the stall was detected before the next line was due", "took %ld ms, interval %ld",
             now_ms() - t0, g_log_interval_ms);
    check_at(contains(bd_last_error(), "/v2/local/logs"), __LINE__, "the stall message names the stream",
             "%s", bd_last_error());
    memset(&c, 0, sizeof c);
    c.stop_after = 4;
    CHECK_RC(bd_journal_logs("{\"follow\":true,\"count\":1}", on_line, &c), BD_ERR_TIMEOUT,
             "bd_journal_logs follow gives BD_ERR_TIMEOUT when the stream stalls");
    CHECK(c.count == 1, "the journal stall came after the first line");
    CHECK_RC(bd_set_stream_timeout_ms(0), BD_OK, "bd_set_stream_timeout_ms(0): no limit again");

    /* The supervisor ends the stream: the call ends at once with BD_OK. */
    sim_set("{\"close_streams\":true}");
    memset(&c, 0, sizeof c);
    c.stop_after = 100;
    t0 = now_ms();
    CHECK_RC(bd_journal_logs("{\"follow\":true,\"count\":2}", on_line, &c), BD_OK,
             "a followed journal the supervisor closes ends with BD_OK");
    check_at(c.count >= 1 && now_ms() - t0 < g_log_interval_ms - 100, __LINE__,
             "it ended when the server closed it", "count %d, took %ld ms", c.count, now_ms() - t0);
    fresh();
}

static void test_locks(void)
{
    char dir[256];
    char sub[300];
    char path[320];
    struct stat sb;
    int fd;
    const char *tmp = getenv("TMPDIR");
    section("update locks");

    snprintf(dir, sizeof dir, "%s/bd-c-test-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(dir))
        die("mkdtemp failed");
    snprintf(sub, sizeof sub, "%s/balena", dir);
    snprintf(path, sizeof path, "%s/updates.lock", sub);

    CHECK_RC(bd_set_update_lock_path(""), BD_ERR_INVALID_ARGUMENT, "bd_set_update_lock_path(\"\")");
    CHECK_RC(bd_set_update_lock_path("relative/updates.lock"), BD_ERR_INVALID_ARGUMENT,
             "bd_set_update_lock_path(relative)");
    CHECK_RC(bd_set_update_lock_path("/tmp/dir/"), BD_ERR_INVALID_ARGUMENT,
             "bd_set_update_lock_path(ending in /)");
    CHECK_RC(bd_set_update_lock_path("/tmp/\xff.lock"), BD_ERR_INVALID_ARGUMENT,
             "bd_set_update_lock_path(non-UTF-8)");
    CHECK_RC(bd_set_update_lock_path(NULL), BD_OK, "bd_set_update_lock_path(NULL) restores the default");
    CHECK_RC(bd_set_update_lock_path(path), BD_OK, "bd_set_update_lock_path(temp path)");

    CHECK_RC(bd_updates_locked(), 0, "bd_updates_locked() is 0 before locking");
    CHECK_RC(bd_lock_updates(), BD_OK, "bd_lock_updates creates the file (and its parent directory)");
    CHECK(stat(path, &sb) == 0, "the lock file exists");
    CHECK_RC(bd_updates_locked(), 1, "bd_updates_locked() is 1 while held");
    CHECK_RC(bd_lock_updates(), BD_ERR_LOCKED, "a second bd_lock_updates in this process gives BD_ERR_LOCKED");
    CHECK_RC(bd_set_update_lock_path(NULL), BD_ERR_LOCKED, "bd_set_update_lock_path while held gives BD_ERR_LOCKED");
    fd = open(path, O_RDONLY);
    check_at(fd >= 0 && flock(fd, LOCK_EX | LOCK_NB) != 0 && errno == EWOULDBLOCK, __LINE__,
             "an exclusive flock is held on the file", "fd %d errno %d", fd, errno);
    if (fd >= 0)
        close(fd);
    CHECK_RC(bd_unlock_updates(), BD_OK, "bd_unlock_updates");
    CHECK(stat(path, &sb) != 0 && errno == ENOENT, "the lock file is gone");
    CHECK_RC(bd_updates_locked(), 0, "bd_updates_locked() is 0 after unlocking");
    CHECK_RC(bd_unlock_updates(), BD_OK, "bd_unlock_updates when not held is BD_OK");

    /* A file someone else created. */
    fd = open(path, O_CREAT | O_EXCL | O_WRONLY, 0644);
    CHECK(fd >= 0, "another party creates the lock file");
    if (fd >= 0)
        close(fd);
    CHECK_RC(bd_updates_locked(), 1, "bd_updates_locked() sees a lock file it did not create");
    CHECK_RC(bd_lock_updates(), BD_ERR_LOCKED, "bd_lock_updates while another party holds the file");
    unlink(path);

    /* A forced supervisor action deleted our file, and a new one appeared:
     * unlock must not remove the new one. */
    CHECK_RC(bd_lock_updates(), BD_OK, "bd_lock_updates again");
    unlink(path);
    fd = open(path, O_CREAT | O_EXCL | O_WRONLY, 0644);
    if (fd >= 0)
        close(fd);
    CHECK_RC(bd_unlock_updates(), BD_OK, "bd_unlock_updates after the file was replaced");
    CHECK(stat(path, &sb) == 0, "bd_unlock_updates left someone else's file alone");
    unlink(path);
    CHECK_RC(bd_lock_updates(), BD_OK, "bd_lock_updates after cleanup");
    CHECK_RC(bd_unlock_updates(), BD_OK, "bd_unlock_updates after cleanup");

    CHECK_RC(bd_set_update_lock_path(NULL), BD_OK, "bd_set_update_lock_path(NULL) when not held");
    rmdir(sub);
    rmdir(dir);
}

/* Removes the file *(const char **)arg names after 200 ms x scale. */
static void *unlink_later(void *arg)
{
    const char *path = *(const char **)arg;
    struct timespec ts;
    long ms = 200 * g_scale;
    ts.tv_sec = ms / 1000;
    ts.tv_nsec = (ms % 1000) * 1000000L;
    nanosleep(&ts, NULL);
    unlink(path);
    return NULL;
}

static void test_part3(void)
{
    char buf[512];
    char dir[256];
    char path[320];
    const char *tmp = getenv("TMPDIR");
    long t0;
    int fd;
    section("0.2.0: three kinds of 423, late actions, update cancel, lock holders, key rotation");
    fresh();

    /* LOCKED: an app's lock; the message advises force only without force. */
    sim_set("{\"locked\":true}");
    CHECK_RC(bd_reboot(false), BD_ERR_LOCKED, "bd_reboot(false) behind an app's lock gives BD_ERR_LOCKED");
    check_at(contains(bd_last_error(), "Lockfile exists for { appId: ") &&
                 contains(bd_last_error(), "retry with force"),
             __LINE__, "the LOCKED message quotes the supervisor and advises force", "%s",
             bd_last_error());
    sim_set("{\"locked\":false}");

    /* BUSY: the supervisor's own operation holds the locks, also with force. */
    sim_set("{\"locks_busy\":true,\"busy_wait_ms\":100}");
    CHECK_RC(bd_restart(g_app_id), BD_ERR_BUSY, "bd_restart while another supervisor operation holds the locks");
    CHECK(bd_last_http_status() == 423, "BUSY: bd_last_http_status() is 423");
    check_at(contains(bd_last_error(), "being held by another supervisor operation") &&
                 !contains(bd_last_error(), "retry with force"),
             __LINE__, "the BUSY message quotes the supervisor and does not advise force", "%s",
             bd_last_error());
    CHECK_RC(bd_reboot(true), BD_ERR_BUSY, "bd_reboot(true) while busy gives BD_ERR_BUSY (force cannot help)");
    CHECK_WIRE("bd_reboot(true) while busy", "POST", "/v1/reboot", "{\"force\":true}", KEY_CURRENT);
    CHECK(!sim_state_has("\"reboot(force)\""), "the busy supervisor did not reboot");
    sim_set("{\"locks_busy\":false}");

    fresh();

    /* HOST_UPDATE: reboot/shutdown while a host OS update finishes. */
    sim_set("{\"host_update\":true}");
    CHECK_RC(bd_reboot(false), BD_ERR_HOST_UPDATE, "bd_reboot during a host OS update gives BD_ERR_HOST_UPDATE");
    CHECK(bd_last_http_status() == 423, "HOST_UPDATE: bd_last_http_status() is 423");
    check_at(contains(bd_last_error(), "Waiting for Host OS update to finish") &&
                 contains(bd_last_error(), "do not force"),
             __LINE__, "the HOST_UPDATE message quotes the supervisor and warns against force", "%s",
             bd_last_error());
    CHECK_RC(bd_shutdown(false), BD_ERR_HOST_UPDATE, "bd_shutdown during a host OS update gives BD_ERR_HOST_UPDATE");
    CHECK_RC(bd_restart(g_app_id), BD_OK, "a restart is not held back by a host OS update");
    fresh();

    /* An action answered after the client gave up may still happen. */
    CHECK_RC(bd_set_timeout_ms((uint32_t)(300 * g_scale)), BD_OK, "bd_set_timeout_ms(300)");
    snprintf(buf, sizeof buf, "{\"action_delay_ms\":%ld}", 900 * g_scale);
    sim_set(buf);
    {
        long before = sim_request_count();
        t0 = now_ms();
        CHECK_RC(bd_reboot(false), BD_ERR_TIMEOUT, "bd_reboot answered late gives BD_ERR_TIMEOUT");
        check_at(now_ms() - t0 < 300 * g_scale + 700 * g_scale, __LINE__,
                 "the late action's call ended at its deadline", "took %ld ms", now_ms() - t0);
        check_at(contains(bd_last_error(), "may still carry it out"), __LINE__,
                 "the timeout says the supervisor may still carry the action out", "%s",
                 bd_last_error());
        CHECK(sim_state_has("\"reboot\""), "the simulator carried the reboot out anyway");
        CHECK(sim_request_count() == before + 1, "the timed-out action was not re-sent");
    }
    CHECK_RC(bd_state_json(buf, sizeof buf) > 0 ? 0 : -1, 0, "a read after the late action works");
    fresh();

    /* bd_update_cancel */
    CHECK_RC(bd_update_cancel(false), BD_OK, "bd_update_cancel(false)");
    CHECK_WIRE("bd_update_cancel(false)", "POST", "/v1/update", "{\"force\":false,\"cancel\":true}",
               KEY_CURRENT);
    CHECK_RC(bd_update_cancel(true), BD_OK, "bd_update_cancel(true)");
    CHECK_WIRE("bd_update_cancel(true)", "POST", "/v1/update", "{\"force\":true,\"cancel\":true}",
               KEY_CURRENT);
    CHECK(sim_state_has("\"update(cancel)\"") && sim_state_has("\"update(force,cancel)\""),
          "the simulator recorded both cancels");

    /* Who holds the update lock. */
    snprintf(dir, sizeof dir, "%s/bd-c-holder-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(dir))
        die("mkdtemp failed");
    snprintf(path, sizeof path, "%s/updates.lock", dir);
    CHECK_RC(bd_set_update_lock_path(path), BD_OK, "bd_set_update_lock_path(temp path)");
    CHECK_RC(bd_update_lock_holder(), BD_LOCK_NONE, "bd_update_lock_holder() with no file is BD_LOCK_NONE");
    CHECK_RC(bd_lock_updates(), BD_OK, "bd_lock_updates");
    CHECK_RC(bd_update_lock_holder(), BD_LOCK_THIS_PROCESS, "held here: BD_LOCK_THIS_PROCESS");
    {
        char rec[256] = "";
        FILE *f = fopen(path, "r");
        if (f) {
            size_t n = fread(rec, 1, sizeof rec - 1, f);
            rec[n] = '\0';
            fclose(f);
        }
        snprintf(buf, sizeof buf, "pid %ld", (long)getpid());
        check_at(contains(rec, "balena_device") && contains(rec, buf), __LINE__,
                 "the lock file records the library and this process", "%s", rec);
    }
    CHECK_RC(bd_unlock_updates(), BD_OK, "bd_unlock_updates");

    fd = open(path, O_CREAT | O_EXCL | O_WRONLY, 0644);
    if (fd >= 0)
        close(fd);
    CHECK_RC(bd_update_lock_holder(), BD_LOCK_OTHER, "a file of unknown origin: BD_LOCK_OTHER");
    t0 = now_ms();
    CHECK_RC(bd_lock_updates_wait((uint32_t)(300 * g_scale)), BD_ERR_LOCKED,
             "bd_lock_updates_wait gives BD_ERR_LOCKED when the file stays");
    check_at(now_ms() - t0 >= 300 * g_scale - 10 && contains(bd_last_error(), "waited"), __LINE__,
             "it waited its time and says so", "took %ld ms: %s", now_ms() - t0, bd_last_error());
    {
        pthread_t remover;
        const char *p = path;
        if (pthread_create(&remover, NULL, unlink_later, &p) != 0)
            die("pthread_create failed");
        t0 = now_ms();
        CHECK_RC(bd_lock_updates_wait((uint32_t)(5000 * g_scale)), BD_OK,
                 "bd_lock_updates_wait takes the lock once the other file is gone");
        pthread_join(remover, NULL);
        check_at(now_ms() - t0 >= 200 * g_scale - 10, __LINE__, "it waited for the file to go",
                 "took %ld ms", now_ms() - t0);
        CHECK_RC(bd_update_lock_holder(), BD_LOCK_THIS_PROCESS, "then it is this process's");
        CHECK_RC(bd_unlock_updates(), BD_OK, "bd_unlock_updates after waiting");
    }

    if (geteuid() == 0) {
        fd = open(path, O_CREAT | O_EXCL | O_WRONLY, 0644);
        CHECK(fd >= 0 && fchown(fd, 65534, 65534) == 0, "a lock file owned by uid 65534");
        if (fd >= 0)
            close(fd);
        CHECK_RC(bd_update_lock_holder(), BD_LOCK_SUPERVISOR, "uid 65534's file: BD_LOCK_SUPERVISOR");
        CHECK_RC(bd_lock_updates(), BD_ERR_LOCKED, "the supervisor's lock is never taken");
        unlink(path);
    } else {
        printf("# not root: the uid-65534 lock file is checked by the Rust tests only\n");
    }

    /* A lock left by a process that is gone is stale and taken over. */
    {
        pid_t child = fork();
        int status = 0;
        if (child == 0)
            _exit(bd_lock_updates() == BD_OK ? 0 : 3); /* no unlock, no atexit */
        CHECK(child > 0 && waitpid(child, &status, 0) == child && WIFEXITED(status) &&
                  WEXITSTATUS(status) == 0,
              "a forked child took the lock and exited without releasing it");
        CHECK_RC(bd_update_lock_holder(), BD_LOCK_STALE, "the gone child's lock: BD_LOCK_STALE");
        CHECK_RC(bd_updates_locked(), 1, "a stale lock still counts as locked");
        CHECK_RC(bd_lock_updates(), BD_OK, "bd_lock_updates takes a stale lock over");
        CHECK_RC(bd_update_lock_holder(), BD_LOCK_THIS_PROCESS, "the taken-over lock is this process's");
        CHECK_RC(bd_unlock_updates(), BD_OK, "bd_unlock_updates of the taken-over lock");
        CHECK_RC(bd_update_lock_holder(), BD_LOCK_NONE, "no file after unlocking");
    }
    CHECK_RC(bd_set_update_lock_path(NULL), BD_OK, "bd_set_update_lock_path(NULL)");
    rmdir(dir);

    /* Key rotation survives re-reading the environment, which still holds
       the replaced key. */
    fresh();
    {
        char newkey[256];
        const char *envkey = getenv("BALENA_SUPERVISOR_API_KEY");
        int n = bd_regenerate_api_key(newkey, sizeof newkey);
        check_at(n > 0, __LINE__, "bd_regenerate_api_key", "rc %d", n);
        snprintf(g_key, sizeof g_key, "%s", newkey);
        CHECK(envkey && strcmp(envkey, newkey) != 0, "the environment still holds the replaced key");
        bd_cleanup();
        CHECK_RC(bd_state_json(buf, sizeof buf) > 0 ? 0 : bd_last_http_status(), 0,
                 "after bd_cleanup the first call uses the new key");
        CHECK_WIRE("first call after bd_cleanup", "GET", "/v1/device", "", KEY_CURRENT);
        CHECK_RC(bd_init_from_env(), BD_OK, "bd_init_from_env");
        CHECK_RC(bd_blink(), BD_OK, "bd_blink after bd_init_from_env uses the new key");
        CHECK_WIRE("bd_blink after bd_init_from_env", "POST", "/v1/blink", "", KEY_CURRENT);
        CHECK_RC(bd_init(g_addr, NULL), BD_OK, "bd_init(addr, NULL)");
        CHECK_RC(bd_blink(), BD_OK, "bd_blink after bd_init(addr, NULL) uses the new key");
        CHECK_WIRE("bd_blink after bd_init(addr, NULL)", "POST", "/v1/blink", "", KEY_CURRENT);
    }
    fresh();
}

int main(void)
{
    const char *addr = getenv("BALENA_SUPERVISOR_ADDRESS");
    const char *key = getenv("BALENA_SUPERVISOR_API_KEY");
    const char *app = getenv("BALENA_APP_ID");
    const char *scale = getenv("BD_TEST_TIME_SCALE");
    const char *interval = getenv("BD_TEST_LOG_INTERVAL_MS");

    if (!addr || !key || !app) {
        printf("set BALENA_SUPERVISOR_ADDRESS, BALENA_SUPERVISOR_API_KEY and BALENA_APP_ID to a "
               "running simulator\n");
        printf("0 passed, 1 failed\n");
        return 2;
    }
    snprintf(g_addr, sizeof g_addr, "%s", addr);
    snprintf(g_initial_key, sizeof g_initial_key, "%s", key);
    snprintf(g_key, sizeof g_key, "%s", key);
    g_app_id = (unsigned)strtoul(app, NULL, 10);
    if (scale && atol(scale) > 0)
        g_scale = atol(scale);
    if (interval && atol(interval) > 0)
        g_log_interval_ms = atol(interval);
    if (g_log_interval_ms < 1000 * g_scale)
        die("BD_TEST_LOG_INTERVAL_MS must be at least 1000 x BD_TEST_TIME_SCALE");
    if (parse_address(addr) != 0)
        die("BALENA_SUPERVISOR_ADDRESS is not http://host:port");

    printf("# balena_device %s against %s (app %u, time scale %ld)\n", bd_version(), addr,
           g_app_id, g_scale);
    test_library();
    test_config();
    test_errors();
    test_threads();
    test_thread_exit();
    test_text_functions();
    test_v1();
    test_v2();
    test_streams();
    test_locks();
    test_part3();
    bd_cleanup();

    printf("%d passed, %d failed\n", g_passed, g_failed);
    return g_failed == 0 ? 0 : 1;
}
