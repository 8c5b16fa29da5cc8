/* Fault injection at the write system calls, for the atomic-write tests (LD_PRELOAD).
 *
 * Every write to a file under the armed directory is counted, whoever makes it: Python's file
 * objects, zipfile, HDF5, protobuf. The n-th such write is torn: half of its bytes reach the file,
 * then the call fails with ENOSPC (a full disk) or the process is killed with SIGKILL. Driven from
 * Python through ctypes: fault_arm(directory, n, kill) resets the count; n = 0 only counts;
 * fault_count() tells how many writes were seen since.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

static char armed_dir[PATH_MAX];
static long seen, fault_at;
static int kill_at_fault;

void fault_arm(const char *directory, long n, int kill) {
    snprintf(armed_dir, sizeof armed_dir, "%s/", directory);
    seen = 0;
    fault_at = n;
    kill_at_fault = kill;
}

long fault_count(void) { return seen; }

/* Whether this write to fd is the one to tear (counting it if the file is under the directory). */
static int tear(int fd) {
    char link[64], path[PATH_MAX];
    if (!armed_dir[0]) return 0;
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t len = readlink(link, path, sizeof path - 1);
    if (len <= 0) return 0;
    path[len] = '\0';
    if (strncmp(path, armed_dir, strlen(armed_dir)) != 0) return 0;
    return ++seen == fault_at;
}

/* Half of what a copy from in_fd would move: a request may ask for more than the file holds. */
static size_t half_of_copy(int in_fd, const off_t *offset, size_t n) {
    struct stat st;
    off_t at = offset ? *offset : lseek(in_fd, 0, SEEK_CUR);
    if (fstat(in_fd, &st) == 0 && S_ISREG(st.st_mode) && at >= 0 && st.st_size - at < (off_t)n)
        n = st.st_size > at ? (size_t)(st.st_size - at) : 0;
    return n / 2;
}

static ssize_t fail(void) {
    if (kill_at_fault) raise(SIGKILL);
    errno = ENOSPC;
    return -1;
}

#define REAL(name) static __typeof__(name) *real; if (!real) real = dlsym(RTLD_NEXT, #name)

ssize_t write(int fd, const void *buf, size_t n) {
    REAL(write);
    if (!tear(fd)) return real(fd, buf, n);
    real(fd, buf, n / 2);
    return fail();
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t offset) {
    REAL(pwrite);
    if (!tear(fd)) return real(fd, buf, n, offset);
    real(fd, buf, n / 2, offset);
    return fail();
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off_t offset) {
    REAL(pwrite64);
    if (!tear(fd)) return real(fd, buf, n, offset);
    real(fd, buf, n / 2, offset);
    return fail();
}

ssize_t writev(int fd, const struct iovec *iov, int count) {
    REAL(writev);
    if (!tear(fd)) return real(fd, iov, count);
    struct iovec half = {count > 0 ? iov[0].iov_base : NULL, count > 0 ? iov[0].iov_len / 2 : 0};
    real(fd, &half, 1);
    return fail();
}

ssize_t pwritev(int fd, const struct iovec *iov, int count, off_t offset) {
    REAL(pwritev);
    if (!tear(fd)) return real(fd, iov, count, offset);
    struct iovec half = {count > 0 ? iov[0].iov_base : NULL, count > 0 ? iov[0].iov_len / 2 : 0};
    real(fd, &half, 1, offset);
    return fail();
}

ssize_t pwritev64v2(int fd, const struct iovec *iov, int count, off_t offset, int flags) {
    REAL(pwritev64v2);
    if (!tear(fd)) return real(fd, iov, count, offset, flags);
    struct iovec half = {count > 0 ? iov[0].iov_base : NULL, count > 0 ? iov[0].iov_len / 2 : 0};
    real(fd, &half, 1, offset, flags);
    return fail();
}

/* On 64-bit Linux sendfile64 is what CPython calls (shutil.copyfile); sendfile for other callers. */
ssize_t sendfile64(int out_fd, int in_fd, off_t *offset, size_t n) {
    REAL(sendfile64);
    if (!tear(out_fd)) return real(out_fd, in_fd, offset, n);
    real(out_fd, in_fd, offset, half_of_copy(in_fd, offset, n));
    return fail();
}

ssize_t sendfile(int out_fd, int in_fd, off_t *offset, size_t n) { return sendfile64(out_fd, in_fd, offset, n); }

ssize_t copy_file_range(int in_fd, off_t *in_off, int out_fd, off_t *out_off, size_t n,
                        unsigned int flags) {
    REAL(copy_file_range);
    if (!tear(out_fd)) return real(in_fd, in_off, out_fd, out_off, n, flags);
    real(in_fd, in_off, out_fd, out_off, half_of_copy(in_fd, in_off, n), flags);
    return fail();
}
