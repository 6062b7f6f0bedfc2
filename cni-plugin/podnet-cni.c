/*
 * podnet CNI plugin: a static executable that needs no interpreter on the host.
 *
 * It does what podnet/cni/shim.py does, byte for byte on the wire (podnet/cni/wire.py has the protocol):
 * VERSION is answered here; every other command is forwarded to the podnet agent on this node over its
 * unix socket (default the abstract "@podnet/cni", or $PODNET_AGENT_SOCKET, or the config's
 * "agent_socket"), as
 *
 *     "PODNET/2 <env bytes> <stdin bytes> <netns>\n" + env (NUL-separated CNI_* pairs) + stdin
 *
 * where <netns> says how CNI_NETNS was resolved here, in the runtime's mount namespace, without ever
 * blocking (O_PATH first, reopened only when it is on nsfs); with "fd" the namespace's descriptor rides
 * along with the header (SCM_RIGHTS). The agent's answer, "<exit code>\n" + stdout, is repeated. Error codes decided here (the rest are
 * the agent's): 4 when a CNI_* variable is not UTF-8, 11 (try again later) when the agent cannot be
 * reached, 50 for STATUS then. Built by `make` with musl (cni-plugin/Makefile rules in the top Makefile).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define SUPPORTED "[\"0.1.0\", \"0.2.0\", \"0.3.0\", \"0.3.1\", \"0.4.0\", \"1.0.0\", \"1.1.0\"]"
#define LATEST "1.1.0"
#define DEFAULT_ADDRESS "@podnet/cni"
#define TIMEOUT_SECONDS 120
#define INVALID_ENVIRONMENT 4
#define TRY_AGAIN_LATER 11
#define STATUS_NOT_READY 50
#define MAX_INPUT (16u << 20) /* the agent refuses more anyway */

struct buf {
    char *data;
    size_t len, cap;
};

static void put(struct buf *b, const void *p, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *d = realloc(b->data, cap);
        if (!d) {
            perror("podnet");
            _exit(1);
        }
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = 0;
}

static void puts_(struct buf *b, const char *s) { put(b, s, strlen(s)); }

static int write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
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

static void read_all(int fd, struct buf *b)
{
    char chunk[65536];
    for (;;) {
        ssize_t r = read(fd, chunk, sizeof chunk);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return;
        if (b->len + (size_t)r > MAX_INPUT) {
            /* Not cut short silently: one byte over the limit makes the agent refuse it with its code. */
            put(b, chunk, MAX_INPUT + 1 - b->len);
            return;
        }
        put(b, chunk, (size_t)r);
    }
}

/* The config's cniVersion when it is one we speak, else the latest (answers use it). */
static const char *version_of(const struct buf *in)
{
    static char v[16];
    const char *p = in->data ? memmem(in->data, in->len, "\"cniVersion\"", 12) : NULL;
    if (!p)
        return LATEST;
    const char *end = in->data + in->len;
    p += 12;
    while (p < end && *p != ':')
        p++;
    while (p < end && *p != '"')
        p++;
    if (p >= end)
        return LATEST;
    const char *q = memchr(p + 1, '"', (size_t)(end - p - 1));
    if (!q || q - p - 1 <= 0 || q - p - 1 >= 12)
        return LATEST;
    char quoted[20];
    snprintf(quoted, sizeof quoted, "\"%.*s\"", (int)(q - p - 1), p + 1);
    if (!strstr(SUPPORTED, quoted))
        return LATEST;
    snprintf(v, sizeof v, "%.*s", (int)(q - p - 1), p + 1);
    return v;
}

static void json_string(struct buf *b, const char *s)
{
    puts_(b, "\"");
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        char esc[8];
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            put(b, esc, 2);
        } else if (c < 0x20) {
            snprintf(esc, sizeof esc, "\\u%04x", c);
            puts_(b, esc);
        } else {
            put(b, s, 1);
        }
    }
    puts_(b, "\"");
}

static int fail(const struct buf *in, int code, const char *msg, const char *details)
{
    struct buf out = {0};
    char head[64];
    snprintf(head, sizeof head, "{\"cniVersion\": \"%s\", \"code\": %d, \"msg\": ", version_of(in), code);
    puts_(&out, head);
    json_string(&out, msg);
    puts_(&out, ", \"details\": ");
    json_string(&out, details);
    puts_(&out, "}");
    write_all(1, out.data, out.len);
    return 1;
}

static int valid_utf8(const unsigned char *s)
{
    while (*s) {
        unsigned char c = *s;
        int n = c < 0x80 ? 0 : (c >> 5) == 6 ? 1 : (c >> 4) == 14 ? 2 : (c >> 3) == 30 ? 3 : -1;
        if (n < 0)
            return 0;
        if (n == 1 && c < 0xc2)
            return 0; /* overlong */
        s++;
        for (int i = 0; i < n; i++, s++)
            if ((*s & 0xc0) != 0x80)
                return 0;
    }
    return 1;
}

/* The string value of "agent_socket" in the config (JSON escapes decoded); NULL if absent or not a string. */
static char *agent_socket_field(const struct buf *in)
{
    static const char key[] = "\"agent_socket\"";
    const char *p = in->data ? memmem(in->data, in->len, key, sizeof key - 1) : NULL;
    if (!p)
        return NULL;
    const char *end = in->data + in->len;
    p += sizeof key - 1;
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r' || *p == ':'))
        p++;
    if (p >= end || *p != '"')
        return NULL;
    struct buf v = {0};
    for (p++; p < end && *p != '"'; p++) {
        char c = *p;
        if (c == '\\' && p + 1 < end) {
            c = *++p;
            switch (c) {
            case 'n': c = '\n'; break;
            case 't': c = '\t'; break;
            case 'r': c = '\r'; break;
            case 'b': c = '\b'; break;
            case 'f': c = '\f'; break;
            case 'u': {
                unsigned cp = 0;
                if (end - p < 5 || sscanf(p + 1, "%4x", &cp) != 1)
                    return NULL;
                p += 4;
                char u[3];
                if (cp < 0x80) {
                    u[0] = (char)cp;
                    put(&v, u, 1);
                } else if (cp < 0x800) {
                    u[0] = (char)(0xc0 | (cp >> 6));
                    u[1] = (char)(0x80 | (cp & 0x3f));
                    put(&v, u, 2);
                } else {
                    u[0] = (char)(0xe0 | (cp >> 12));
                    u[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
                    u[2] = (char)(0x80 | (cp & 0x3f));
                    put(&v, u, 3);
                }
                continue;
            }
            default: break; /* \" \\ \/ */
            }
        }
        put(&v, &c, 1);
    }
    if (p >= end)
        return NULL;
    if (!v.data)
        put(&v, "", 0);
    return v.data;
}

/* CNI_NETNS resolved as wire.py's steps 1-5 say: the token, and in *fd the descriptor to send (or -1). */
static void open_netns(const char *path, char *token, size_t size, int *fd)
{
    *fd = -1;
    if (!path || !*path) {
        snprintf(token, size, "unset");
        return;
    }
    if (path[0] != '/') {
        snprintf(token, size, "relative");
        return;
    }
    int handle = open(path, O_PATH | O_CLOEXEC); /* opens nothing: cannot block */
    if (handle < 0) {
        snprintf(token, size, "errno:%d", errno);
        return;
    }
    struct stat st, ns;
    if (fstat(handle, &st) < 0 || stat("/proc/self/ns/net", &ns) < 0) {
        snprintf(token, size, "errno:%d", errno);
    } else if (!S_ISREG(st.st_mode) || st.st_dev != ns.st_dev) {
        const char *kind = S_ISREG(st.st_mode) ? "regular" : S_ISDIR(st.st_mode) ? "directory"
                         : S_ISFIFO(st.st_mode) ? "fifo" : S_ISCHR(st.st_mode) ? "char"
                         : S_ISBLK(st.st_mode) ? "block" : S_ISSOCK(st.st_mode) ? "socket" : "other";
        snprintf(token, size, "notnsfs:%s", kind);
    } else {
        char proc[64];
        snprintf(proc, sizeof proc, "/proc/self/fd/%d", handle);
        *fd = open(proc, O_RDONLY | O_CLOEXEC); /* nsfs: cannot block */
        if (*fd < 0)
            snprintf(token, size, "errno:%d", errno);
        else
            snprintf(token, size, "fd");
    }
    close(handle);
}

/* The header with the namespace's descriptor attached (SCM_RIGHTS); returns bytes sent or -1. */
static ssize_t send_with_fd(int s, const char *data, size_t len, int fd)
{
    char control[CMSG_SPACE(sizeof(int))] = {0};
    struct iovec iov = {.iov_base = (void *)data, .iov_len = len};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control,
                         .msg_controllen = sizeof control};
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof(int));
    ssize_t n;
    do
        n = sendmsg(s, &msg, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    return n;
}

static int connect_agent(int s, const struct sockaddr_un *addr, socklen_t len)
{
    /* A unix socket whose listen queue is full refuses at once with EAGAIN: the agent is busy, not
     * gone, so wait a little and knock again (as the shim does). */
    for (int attempt = 0; attempt < 200; attempt++) {
        if (connect(s, (const struct sockaddr *)addr, len) == 0)
            return 0;
        if (errno != EAGAIN && errno != EINTR)
            return -1;
        struct timespec ts = {0, 5000000L * (attempt + 1 < 20 ? attempt + 1 : 20)};
        nanosleep(&ts, NULL);
    }
    return connect(s, (const struct sockaddr *)addr, len);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN); /* a closed socket or stdout is an error to report, not a death */
    const char *command = getenv("CNI_COMMAND");
    if (!command)
        command = "";
    struct buf in = {0};
    if (strcmp(command, "VERSION") != 0 || !isatty(0))
        read_all(0, &in);
    if (strcmp(command, "VERSION") == 0) {
        char out[256];
        int n = snprintf(out, sizeof out, "{\"cniVersion\": \"%s\", \"supportedVersions\": %s}", version_of(&in),
                         SUPPORTED);
        write_all(1, out, (size_t)n);
        return 0;
    }
    int unavailable = strcmp(command, "STATUS") == 0 ? STATUS_NOT_READY : TRY_AGAIN_LATER;

    struct buf env = {0}, bad = {0};
    for (char **e = environ; *e; e++) {
        if (strncmp(*e, "CNI_", 4) != 0)
            continue;
        if (!valid_utf8((const unsigned char *)*e)) {
            const char *eq = strchr(*e, '=');
            if (bad.len)
                puts_(&bad, " ");
            put(&bad, *e, eq ? (size_t)(eq - *e) : strlen(*e));
            continue;
        }
        if (env.len)
            put(&env, "", 1); /* the NUL between pairs */
        puts_(&env, *e);
    }
    if (bad.len)
        return fail(&in, INVALID_ENVIRONMENT, "a CNI_* environment variable is not valid UTF-8", bad.data);

    const char *address = getenv("PODNET_AGENT_SOCKET");
    if (!address || !*address) {
        address = agent_socket_field(&in);
        if (!address || !*address)
            address = DEFAULT_ADDRESS;
    }
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    size_t alen = strlen(address);
    char shown[sizeof sa.sun_path + 64];
    snprintf(shown, sizeof shown, "%s", address);
    if (alen >= sizeof sa.sun_path) {
        char details[sizeof shown + 128];
        snprintf(details, sizeof details, "address too long at %s; is `podnet agent` running on this node?", shown);
        return fail(&in, unavailable, "the podnet agent on this node is not reachable", details);
    }
    memcpy(sa.sun_path, address, alen);
    if (address[0] == '@')
        sa.sun_path[0] = 0; /* abstract: it belongs to this network namespace */
    socklen_t salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + alen + (address[0] == '@' ? 0 : 1));

    char token[64];
    int netns = -1;
    if (!strcmp(command, "ADD") || !strcmp(command, "DEL") || !strcmp(command, "CHECK"))
        open_netns(getenv("CNI_NETNS"), token, sizeof token, &netns);
    else
        snprintf(token, sizeof token, "unset");

    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct timeval tv = {TIMEOUT_SECONDS, 0};
    struct buf reply = {0};
    const char *why = NULL;
    if (s < 0) {
        why = strerror(errno);
    } else {
        setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        struct buf req = {0};
        char head[128];
        int head_len = snprintf(head, sizeof head, "PODNET/2 %zu %zu %s\n", env.len, in.len, token);
        puts_(&req, head);
        if (env.len)
            put(&req, env.data, env.len);
        if (in.len)
            put(&req, in.data, in.len);
        if (connect_agent(s, &sa, salen) < 0) {
            why = errno == EAGAIN ? "timed out" : strerror(errno);
        } else {
            /* A failed send is not the end: the agent answers a request it refuses before it closes. */
            size_t sent = 0;
            if (netns >= 0) {
                ssize_t n = send_with_fd(s, req.data, (size_t)head_len, netns);
                sent = n > 0 ? (size_t)n : 0;
                close(netns);
                netns = -1;
                if (n >= 0)
                    write_all(s, req.data + sent, req.len - sent);
            } else {
                write_all(s, req.data, req.len);
            }
            char chunk[65536];
            for (;;) {
                ssize_t r = read(s, chunk, sizeof chunk);
                if (r < 0 && errno == EINTR)
                    continue;
                if (r < 0) {
                    if (!reply.len)
                        why = errno == EAGAIN ? "timed out" : strerror(errno);
                    break;
                }
                if (r == 0)
                    break;
                put(&reply, chunk, (size_t)r);
            }
        }
        close(s);
    }
    if (netns >= 0)
        close(netns);
    if (why) {
        char details[sizeof shown + 256];
        snprintf(details, sizeof details, "%s at %s; is `podnet agent` running on this node?", why, shown);
        return fail(&in, unavailable, "the podnet agent on this node is not reachable", details);
    }
    char *nl = reply.data ? memchr(reply.data, '\n', reply.len) : NULL;
    int code = 0;
    int digits = nl && nl > reply.data;
    for (char *p = reply.data; digits && p < nl; p++) {
        if (*p < '0' || *p > '9' || code > 1000000)
            digits = 0;
        else
            code = code * 10 + (*p - '0');
    }
    if (!digits)
        return fail(&in, unavailable, "the podnet agent closed the connection without an answer",
                    "it may be restarting; see its log");
    write_all(1, nl + 1, reply.len - (size_t)(nl + 1 - reply.data));
    return code;
}
