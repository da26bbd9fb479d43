/* jailcc's native front end, in the manner of Mercurial's chg: it hands the invocation (argv,
 * working directory, environment, umask, whether stderr is a terminal, its UTC offset) to the
 * per-user proxy over its Unix socket, and prints the answer, or execs the compiler when the
 * proxy says the job is local. Python's start-up is then paid once per proxy, not once per
 * compile.
 *
 * Whenever the proxy cannot answer (none running, a proxy of another uid, a proxy that died
 * before its whole answer arrived or that is stopped, anything malformed) it execs the Python
 * client, jailcc-py beside it, which does the compile on its own and starts a proxy for the
 * next one. Nothing is printed before a whole answer is in, so a fallback never repeats
 * output.
 *
 * The socket's place and the request's bytes are those of client/proxy_wire.py. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define MAX_OUTPUT (64u << 20)
#define MAX_REPLY_STRING (1u << 20)
#define STOPPED_CHECK_MS 2000 /* as client/proxy_client.py STOPPED_CHECK */

struct buf {
	char *data;
	size_t len, cap;
};

static int grow(struct buf *b, size_t more)
{
	if (b->len + more <= b->cap)
		return 0;
	size_t cap = b->cap ? b->cap : 4096;
	while (cap < b->len + more)
		cap *= 2;
	char *data = realloc(b->data, cap);
	if (!data)
		return -1;
	b->data = data;
	b->cap = cap;
	return 0;
}

static int put(struct buf *b, const void *p, size_t n)
{
	if (grow(b, n))
		return -1;
	memcpy(b->data + b->len, p, n);
	b->len += n;
	return 0;
}

static int put_u32(struct buf *b, uint32_t v)
{
	unsigned char be[4] = {v >> 24, v >> 16, v >> 8, v};
	return put(b, be, 4);
}

static int put_str(struct buf *b, const char *s)
{
	return put(b, s, strlen(s) + 1);
}

static uint64_t fnv1a(uint64_t h, const char *s)
{
	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 0x100000001b3ULL;
	return h;
}

static int owned_dir(const char *path)
{
	struct stat st;
	return lstat(path, &st) == 0 && S_ISDIR(st.st_mode) && st.st_uid == getuid();
}

/* As hosts.user_hosts_file(): "" with neither XDG_CONFIG_HOME (absolute) nor HOME. */
static void user_hosts_file(char *out, size_t size)
{
	const char *xdg = getenv("XDG_CONFIG_HOME");
	const char *home = getenv("HOME");
	if (xdg && xdg[0] == '/')
		snprintf(out, size, "%s/jailcc/hosts", xdg);
	else if (home && *home)
		snprintf(out, size, "%s/.config/jailcc/hosts", home);
	else
		out[0] = 0;
}

static int by_value(const void *a, const void *b)
{
	gid_t x = *(const gid_t *)a, y = *(const gid_t *)b;
	return (x > y) - (x < y);
}

/* As proxy_wire.groups_line(): this process's groups. */
static uint64_t hash_groups(uint64_t h)
{
	char text[32];
	h = fnv1a(h, "groups=");
	int n = getgroups(0, NULL);
	gid_t *groups = malloc(sizeof(gid_t) * (n > 0 ? n + 1 : 1));
	if (!groups)
		return h; /* (a key no proxy has: the Python client takes over) */
	n = n > 0 ? getgroups(n, groups) : 0;
	if (n < 0)
		n = 0;
	groups[n++] = getegid();
	qsort(groups, n, sizeof *groups, by_value);
	for (int i = 0; i < n; i++) {
		if (i > 0 && groups[i] == groups[i - 1])
			continue;
		snprintf(text, sizeof text, i ? ",%u" : "%u", (unsigned)groups[i]);
		h = fnv1a(h, text);
	}
	free(groups);
	return fnv1a(h, "\n");
}

/* As proxy_wire.socket_path(), its key from the lines of proxy_wire.key_settings(). */
static int socket_path(char *out, size_t size)
{
	const char *override = getenv("JAILCC_PROXY_SOCKET");
	if (override && *override)
		return snprintf(out, size, "%s", override) >= (int)size ? -1 : 0;
	uint64_t h = 0xcbf29ce484222325ULL;
	const char *hosts = getenv("JAILCC_HOSTS");
	if (hosts) {
		h = fnv1a(h, "JAILCC_HOSTS=");
		h = fnv1a(h, hosts);
	} else {
		char file[PATH_MAX + 32];
		user_hosts_file(file, sizeof file);
		h = fnv1a(h, "hosts file=");
		h = fnv1a(h, file);
	}
	h = fnv1a(h, "\n");
	const char *ccache = getenv("KRB5CCNAME");
	h = fnv1a(h, "KRB5CCNAME=");
	h = fnv1a(h, ccache ? ccache : "");
	h = fnv1a(h, "\n");
	h = hash_groups(h);
	char dir[PATH_MAX];
	const char *xdg = getenv("XDG_RUNTIME_DIR");
	char run_user[64];
	snprintf(run_user, sizeof run_user, "/run/user/%u", (unsigned)getuid());
	if (xdg && *xdg && owned_dir(xdg))
		snprintf(dir, sizeof dir, "%s/jailcc", xdg);
	else if (owned_dir(run_user))
		snprintf(dir, sizeof dir, "%s/jailcc", run_user);
	else {
		struct stat st;
		const char *home = getenv("HOME");
		snprintf(dir, sizeof dir, "/tmp/jailcc-%u", (unsigned)getuid());
		if (lstat(dir, &st) == 0 && !owned_dir(dir) && home && home[0] == '/')
			snprintf(dir, sizeof dir, "%s/.jailcc-proxy", home);
	}
	return snprintf(out, size, "%s/proxy-%016llx.sock", dir, (unsigned long long)h) >= (int)size
		       ? -1
		       : 0;
}

/* The proxy's reply, the one thing read here, through a read-ahead buffer: a LOCAL reply's
 * arguments come a byte at a time otherwise (a link of 30 000 objects took seconds). */
static char ahead[65536];
static size_t ahead_pos, ahead_len;

static int read_all(int fd, void *p, size_t n)
{
	char *c = p;
	while (n) {
		if (ahead_pos == ahead_len) {
			int direct = n >= sizeof ahead; /* a large blob: straight in */
			ssize_t got = read(fd, direct ? c : ahead, direct ? n : sizeof ahead);
			if (got < 0 && errno == EINTR)
				continue;
			if (got <= 0)
				return -1;
			if (direct) {
				c += got;
				n -= (size_t)got;
				continue;
			}
			ahead_pos = 0;
			ahead_len = (size_t)got;
		}
		size_t take = ahead_len - ahead_pos < n ? ahead_len - ahead_pos : n;
		memcpy(c, ahead + ahead_pos, take);
		ahead_pos += take;
		c += take;
		n -= take;
	}
	return 0;
}

/* To the proxy's socket: MSG_NOSIGNAL, since a proxy that dies mid-request must mean a
 * fallback (EPIPE), not a SIGPIPE that kills the compile. Output to stdout and stderr keeps
 * write(2): a closed pipe there ends jailcc as it would end the compiler. */
static int write_all(int fd, const void *p, size_t n, int to_socket)
{
	const char *c = p;
	while (n) {
		ssize_t put = to_socket ? send(fd, c, n, MSG_NOSIGNAL) : write(fd, c, n);
		if (put < 0 && errno == EINTR)
			continue;
		if (put <= 0)
			return -1;
		c += put;
		n -= (size_t)put;
	}
	return 0;
}

static int read_u32(int fd, uint32_t *v)
{
	unsigned char be[4];
	if (read_all(fd, be, 4))
		return -1;
	*v = (uint32_t)be[0] << 24 | (uint32_t)be[1] << 16 | (uint32_t)be[2] << 8 | be[3];
	return 0;
}

static char *read_blob(int fd, uint32_t cap, uint32_t *len)
{
	if (read_u32(fd, len) || *len > cap)
		return NULL;
	char *data = malloc(*len + 1);
	if (!data || read_all(fd, data, *len)) {
		free(data);
		return NULL;
	}
	data[*len] = 0;
	return data;
}

static char *read_cstr(int fd)
{
	struct buf b = {0};
	char c;
	do {
		if (read_all(fd, &c, 1) || b.len >= MAX_REPLY_STRING || put(&b, &c, 1)) {
			free(b.data);
			return NULL;
		}
	} while (c);
	return b.data;
}

/* The proxy's pid (its socket's peer), and whether it is stopped (SIGSTOP, ^Z, a debugger):
 * its answer then never comes, and the build would wait for it for good. */
static pid_t proxy_pid;

static int proxy_stopped(void)
{
	char path[64], line[512];
	snprintf(path, sizeof path, "/proc/%d/stat", (int)proxy_pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0; /* (gone: its socket says so) */
	ssize_t n = read(fd, line, sizeof line - 1);
	close(fd);
	if (n <= 0)
		return 0;
	line[n] = 0;
	const char *state = strrchr(line, ')'); /* after "pid (comm)", which may hold ") " */
	return state && state[1] == ' ' && (state[2] == 'T' || state[2] == 't');
}

/* The answer comes when the job is done, however long that takes; from a stopped proxy,
 * never: then the Python client does the job. */
static int wait_for_answer(int fd)
{
	struct pollfd ready = {.fd = fd, .events = POLLIN};
	for (int stopped = 0;;) {
		int n = poll(&ready, 1, STOPPED_CHECK_MS);
		if (n > 0)
			return 0;
		if (n < 0 && errno != EINTR)
			return -1;
		/* Twice in a row: a profiler's sample stops a process for a moment. */
		stopped = n == 0 && proxy_stopped() ? stopped + 1 : 0;
		if (stopped == 2)
			return -1;
	}
}

static int connect_proxy(void)
{
	struct sockaddr_un addr = {.sun_family = AF_UNIX};
	if (socket_path(addr.sun_path, sizeof addr.sun_path))
		return -1;
	/* Not blocking: a proxy that does not accept (stopped, with its queue full) would hold
	 * connect() for good. */
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -1;
	struct ucred cred;
	socklen_t len = sizeof cred;
	if (connect(fd, (struct sockaddr *)&addr, sizeof addr)) {
		int queue_full = errno == EAGAIN;
		close(fd);
		return queue_full ? -2 : -1; /* -2: a proxy runs, but will not answer */
	}
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) || cred.uid != getuid() ||
	    fcntl(fd, F_SETFL, 0)) {
		close(fd);
		return -1;
	}
	proxy_pid = cred.pid;
	if (proxy_stopped()) {
		close(fd);
		return -2;
	}
	return fd;
}

/* The proxy's answer, acted on. Returns only if there was no whole answer. */
static int same_file(const struct stat *a, const struct stat *b)
{
	return a->st_dev == b->st_dev && a->st_ino == b->st_ino;
}

/* argv[0] for running the compiler here: the name the user typed when looking it up on PATH
 * finds this very file, as the compiler itself will (gcc finds its own directory so, and -v
 * shows the name as COLLECT_GCC): then the run is the plain compile's exactly. Directories
 * on the way whose entry of that name is jailcc (masquerade links) leave PATH first, as
 * distcc does: nothing the compiler runs by name finds jailcc again. Any other file found
 * first: the path, PATH as it is. As client/compiler.py local_arg0. */
static char *local_arg0(const char *typed, char *path, const char *exe)
{
	struct stat wanted, self, python, found;
	const char *dirs = getenv("PATH");
	if (!typed || !*typed || strchr(typed, '/') || !dirs || stat(path, &wanted) ||
	    stat(exe, &self))
		return path;
	char candidate[PATH_MAX];
	snprintf(candidate, sizeof candidate, "%.*s/jailcc-py", (int)(strrchr(exe, '/') - exe), exe);
	int has_python = stat(candidate, &python) == 0;
	struct buf kept = {0}; /* PATH less the masquerade directories */
	int skipped = 0;
	for (const char *dir = dirs;; dir++) {
		const char *end = strchrnul(dir, ':');
		int len = (int)(end - dir);
		int n = snprintf(candidate, sizeof candidate, "%.*s/%s", len ? len : 1,
				 len ? dir : ".", typed);
		if (n > 0 && (size_t)n < sizeof candidate && access(candidate, X_OK) == 0) {
			if (stat(candidate, &found) || !(same_file(&found, &wanted) ||
							same_file(&found, &self) ||
							(has_python && same_file(&found, &python))))
				return path;
			if (same_file(&found, &wanted)) {
				if (skipped && (put(&kept, dir, strlen(dir) + 1) ||
						setenv("PATH", kept.data, 1)))
					return path;
				return (char *)typed;
			}
			skipped = 1;
		} else if (put(&kept, dir, (size_t)len + (*end ? 1 : 0))) {
			return path;
		}
		if (!*end)
			return path;
		dir = end;
	}
}

static int ask(int fd, int argc, char **argv, const char *exe, const char *typed)
{
	struct buf req = {0};
	char cwd[PATH_MAX];
	if (!getcwd(cwd, sizeof cwd))
		return -1;
	mode_t mask = umask(022);
	umask(mask);
	size_t envc = 0;
	for (char **e = environ; *e; e++)
		envc++;
	int ok = put(&req, "JCP1\0\0\0\0", 8) == 0 && put_u32(&req, isatty(2) ? 1 : 0) == 0 &&
		 put_u32(&req, mask) == 0 && put_u32(&req, (uint32_t)argc) == 0;
	for (int i = 0; ok && i < argc; i++)
		ok = put_str(&req, argv[i]) == 0;
	/* First, so that it wins (the proxy takes a name's first string, as getenv does): our UTC
	 * offset now, as our localtime() has it (proxy_wire.py UTC_OFFSET); the proxy's own zone
	 * is that of whoever started it. */
	char offset[48];
	time_t now = time(NULL);
	struct tm local;
	long east = localtime_r(&now, &local) ? local.tm_gmtoff : 0;
	snprintf(offset, sizeof offset, "JAILCC_UTC_OFFSET=%ld", east);
	ok = ok && put_str(&req, exe) == 0 && put_str(&req, cwd) == 0 &&
	     put_u32(&req, (uint32_t)envc + 1) == 0 && put_str(&req, offset) == 0;
	for (char **e = environ; ok && *e; e++)
		ok = put_str(&req, *e) == 0;
	if (!ok)
		return -1;
	uint32_t body = (uint32_t)(req.len - 8);
	unsigned char be[4] = {body >> 24, body >> 16, body >> 8, body};
	memcpy(req.data + 4, be, 4);
	if (write_all(fd, req.data, req.len, 1))
		return -1;
	free(req.data);

	unsigned char kind;
	if (wait_for_answer(fd) || read_all(fd, &kind, 1))
		return -1;
	if (kind == 0) {
		uint32_t code, out_len, err_len;
		if (read_u32(fd, &code))
			return -1;
		char *out = read_blob(fd, MAX_OUTPUT, &out_len);
		char *err = out ? read_blob(fd, MAX_OUTPUT, &err_len) : NULL;
		if (!err)
			return -1;
		close(fd);
		write_all(1, out, out_len, 0);
		write_all(2, err, err_len, 0);
		exit((int)(int32_t)code);
	}
	if (kind != 1)
		return -1;
	uint32_t path_len, nargs, msg_len;
	char *path = read_blob(fd, PATH_MAX, &path_len);
	if (!path || read_u32(fd, &nargs) || nargs > 100000)
		return -1;
	char **args = calloc(nargs + 2, sizeof *args);
	if (!args)
		return -1;
	args[0] = local_arg0(typed, path, exe);
	for (uint32_t i = 0; i < nargs; i++)
		if (!(args[i + 1] = read_cstr(fd)))
			return -1;
	char *msg = read_blob(fd, MAX_REPLY_STRING, &msg_len);
	if (!msg)
		return -1;
	close(fd);
	write_all(2, msg, msg_len, 0);
	execv(path, args);
	fprintf(stderr, "jailcc: cannot run %s: %s\n", path, strerror(errno));
	exit(127);
}

/* jailcc's own subcommands (client/cli.py SUBCOMMANDS: tests/test_hosts_files.py checks that
 * the two lists agree); any other first word is a compiler. */
static const char *const SUBCOMMANDS[] = {"proxy", "status", "hosts", "mon", "trace"};

static int is_subcommand(const char *word)
{
	for (size_t i = 0; i < sizeof SUBCOMMANDS / sizeof SUBCOMMANDS[0]; i++)
		if (strcmp(word, SUBCOMMANDS[i]) == 0)
			return 1;
	return 0;
}

int main(int argc, char **argv)
{
	char exe[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
	if (n <= 0) {
		fprintf(stderr, "jailcc: cannot find myself in /proc/self/exe\n");
		return 127;
	}
	exe[n] = 0;
	const char *base = strrchr(argv[0], '/');
	base = base ? base + 1 : argv[0];
	int ours = strncmp(base, "jailcc", 6) == 0;
	const char *proxy = getenv("JAILCC_PROXY");
	/* Usage, subcommands and a proxy turned off are the Python client's business. */
	/* A closed stderr (2>&-) too: the compiler's own failure to print is the outcome, which
	 * the Python client leaves to the compiler. */
	int plain = !(proxy && strcmp(proxy, "0") == 0) &&
		    !(ours && (argc < 2 || argv[1][0] == '-' || is_subcommand(argv[1]))) &&
		    fcntl(2, F_GETFD) != -1;
	int proxy_runs = 0; /* but gave no answer */
	if (plain) {
		int fd = connect_proxy();
		if (fd >= 0) {
			ask(fd, argc, argv, exe, ours ? argv[1] : base);
			close(fd);
		}
		proxy_runs = fd != -1;
	}
	char python[PATH_MAX + 16];
	char *slash = strrchr(exe, '/');
	snprintf(python, sizeof python, "%.*s/jailcc-py", (int)(slash - exe), exe);
	setenv("JAILCC_ARGV0", argv[0], 1);
	if (plain) /* (with "answerless", it need not look for the proxy again) */
		setenv("JAILCC_PROXY_TRIED", proxy_runs ? "answerless" : "1", 1);
	argv[0] = python;
	execv(python, argv);
	fprintf(stderr, "jailcc: cannot run %s: %s\n", python, strerror(errno));
	return 127;
}
