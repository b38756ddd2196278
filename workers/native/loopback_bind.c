/* LD_PRELOAD shim: wildcard binds become loopback binds.
 *
 * TFF's worker_binary listens on [::]:port with insecure gRPC credentials
 * (tensorflow_federated/cc/simulation/servers.cc); it has no flag for the
 * address. Loaded into that process only (workers/worker_process.py), this
 * bind() turns 0.0.0.0 into 127.0.0.1 and :: into ::ffff:127.0.0.1 on a
 * dual-stack socket (::1 on a v6-only one), so the executor is reachable only
 * from its own network namespace. Any other bind passes through unchanged.
 *
 * The kernel call is made with syscall(2), not through dlsym(RTLD_NEXT): the
 * library then needs only GLIBC_2.2.5 symbols and runs on any glibc, so one
 * build on the host serves the container image too. worker_process checks
 * the worker's sockets after start anyway (fail closed if this is missing).
 *
 * Build: gcc -shared -fPIC -O2 -o loopback_bind.so loopback_bind.c
 */
#define _GNU_SOURCE
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

static int raw_bind(int fd, const struct sockaddr *addr, socklen_t len) {
  return (int)syscall(SYS_bind, fd, addr, len);
}

int bind(int fd, const struct sockaddr *addr, socklen_t len) {
  if (addr != NULL && addr->sa_family == AF_INET &&
      len >= (socklen_t)sizeof(struct sockaddr_in)) {
    struct sockaddr_in in4;
    memcpy(&in4, addr, sizeof(in4));
    if (in4.sin_addr.s_addr == htonl(INADDR_ANY)) {
      in4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      return raw_bind(fd, (const struct sockaddr *)&in4, sizeof(in4));
    }
  } else if (addr != NULL && addr->sa_family == AF_INET6 &&
             len >= (socklen_t)sizeof(struct sockaddr_in6)) {
    struct sockaddr_in6 in6;
    memcpy(&in6, addr, sizeof(in6));
    if (IN6_IS_ADDR_UNSPECIFIED(&in6.sin6_addr)) {
      /* ::ffff:127.0.0.1 keeps IPv4 clients of 127.0.0.1 working. */
      static const unsigned char kMappedLoopback[16] = {
          0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1};
      int v6only = 0;
      socklen_t size = sizeof(v6only);
      if (getsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, &size) != 0) {
        v6only = 1;  /* Unknown: ::1 is loopback either way. */
      }
      if (v6only) {
        in6.sin6_addr = in6addr_loopback;
      } else {
        memcpy(&in6.sin6_addr, kMappedLoopback, sizeof(kMappedLoopback));
      }
      return raw_bind(fd, (const struct sockaddr *)&in6, sizeof(in6));
    }
  }
  return raw_bind(fd, addr, len);
}
