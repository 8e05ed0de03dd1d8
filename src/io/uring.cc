#include "io/uring.h"

#ifdef HOIST_HAVE_URING
#include <liburing.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <deque>
#include <string>
#include <vector>

#include "util/text.h"

#if defined(__SANITIZE_THREAD__)
#define HOIST_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define HOIST_TSAN 1
#endif
#endif
#ifdef HOIST_TSAN
#include <sanitizer/tsan_interface.h>
#endif
#endif

namespace hoist {

#ifdef HOIST_HAVE_URING
namespace {

// liburing maps and unmaps a ring's memory with raw system calls, which
// ThreadSanitizer cannot see: when the kernel maps a new ring where a dropped
// one was, the sanitizer takes the two rings' accesses for one memory shared
// by two threads without synchronisation. The kernel does order them (the
// old mapping is gone before the new one exists); these tell the sanitizer
// so, page by page, so that only threads whose rings shared a page are
// ordered and a real race between loader threads still shows.
#ifdef HOIST_TSAN
template <typename Each>
void ForEachRingPage(const io_uring& ring, Each each) {
  const struct {
    const void* at;
    size_t bytes;
  } maps[] = {{ring.sq.ring_ptr, ring.sq.ring_sz},
              {ring.cq.ring_ptr, ring.cq.ring_sz},
              {ring.sq.sqes, ring.sq.ring_entries * sizeof(io_uring_sqe)}};
  for (const auto& m : maps) {
    const uintptr_t begin = reinterpret_cast<uintptr_t>(m.at) & ~uintptr_t{4095};
    const uintptr_t end = reinterpret_cast<uintptr_t>(m.at) + m.bytes;
    for (uintptr_t page = begin; m.at != nullptr && page < end; page += 4096) each(reinterpret_cast<void*>(page));
  }
}
void RingMapped(const io_uring& ring) { ForEachRingPage(ring, [](void* page) { __tsan_acquire(page); }); }
void RingUnmapping(const io_uring& ring) { ForEachRingPage(ring, [](void* page) { __tsan_release(page); }); }
#else
void RingMapped(const io_uring&) {}
void RingUnmapping(const io_uring&) {}
#endif

class UringReader final : public BlockReader {
 public:
  explicit UringReader(const UringOptions& options) : options_(options) {}
  ~UringReader() override {
    if (!ready_) return;
    RingUnmapping(ring_);
    io_uring_queue_exit(&ring_);
  }
  UringReader(const UringReader&) = delete;
  UringReader& operator=(const UringReader&) = delete;

  Status Init() {
    int rc = io_uring_queue_init(options_.queue_depth, &ring_, 0);
    if (rc < 0) return NotSupported(std::string("io_uring is not available here: ") + std::strerror(-rc));
    RingMapped(ring_);
    ready_ = true;
    return Status::Ok();
  }

  Result<uint64_t> ReadUpTo(const File& file, uint64_t offset_bytes, unsigned char* dst,
                            uint64_t size_bytes) override {
    if (broken_) return IoError(Printable(file.path()) + ": io_uring: this ring failed earlier and is not reused");
    struct Piece {
      uint64_t offset, size, done;
    };
    std::vector<Piece> pieces;
    for (uint64_t at = 0; at < size_bytes; at += options_.piece_bytes) {
      pieces.push_back({offset_bytes + at, std::min(options_.piece_bytes, size_bytes - at), 0});
    }
    std::deque<size_t> to_submit;
    for (size_t i = 0; i < pieces.size(); ++i) to_submit.push_back(i);
    unsigned prepared = 0;   // in the submission queue, not yet taken by the kernel
    unsigned in_kernel = 0;  // taken, not yet completed: may still write into dst
    uint64_t eof_at = UINT64_MAX;  // where a read found the end of the file
    Status error;
    // Until every piece is done, and always until nothing is left with the
    // kernel: it may still be writing into dst.
    while (in_kernel > 0 || (error.ok() && (prepared > 0 || !to_submit.empty()))) {
      while (error.ok() && prepared + in_kernel < options_.queue_depth && !to_submit.empty()) {
        io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
        if (sqe == nullptr) break;
        const size_t i = to_submit.front();
        to_submit.pop_front();
        const Piece& p = pieces[i];
        const uint64_t left = p.size - p.done;
        io_uring_prep_read(sqe, file.fd(), dst + (p.offset - offset_bytes) + p.done,
                           static_cast<unsigned>(std::min<uint64_t>(left, 1u << 30)), p.offset + p.done);
        io_uring_sqe_set_data64(sqe, i);
        ++prepared;
      }
      // Submit what is prepared (entries prepared before an error still go,
      // and are waited for) and wait for one completion.
      int rc = io_uring_submit_and_wait(&ring_, error.ok() || in_kernel > 0 ? 1 : 0);
      if (rc >= 0) {
        const unsigned taken = std::min(static_cast<unsigned>(rc), prepared);
        prepared -= taken;
        in_kernel += taken;
      } else if (rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) {
        // The ring cannot be trusted with its unsubmitted entries: never again.
        broken_ = true;
        if (error.ok()) error = IoError(Printable(file.path()) + ": io_uring submit failed: " + std::strerror(-rc));
        if (in_kernel == 0) break;
        io_uring_cqe* cqe = nullptr;
        int wait = 0;
        do {
          wait = io_uring_wait_cqe(&ring_, &cqe);
        } while (wait == -EINTR || wait == -EAGAIN);
        if (wait < 0) break;  // the ring itself failed: nothing more can come back
      }
      io_uring_cqe* cqe = nullptr;
      while (io_uring_peek_cqe(&ring_, &cqe) == 0 && cqe != nullptr) {
        const size_t i = static_cast<size_t>(io_uring_cqe_get_data64(cqe));
        const int res = cqe->res;
        io_uring_cqe_seen(&ring_, cqe);
        --in_kernel;
        Piece& p = pieces[i];
        if (res == -EINTR || res == -EAGAIN) {
          to_submit.push_back(i);
        } else if (res < 0) {
          if (error.ok()) error = IoError(Printable(file.path()) + ": read failed: " + std::strerror(-res));
        } else if (res == 0) {
          eof_at = std::min(eof_at, p.offset + p.done);
        } else {
          p.done += static_cast<uint64_t>(res);
          if (p.done < p.size) to_submit.push_back(i);  // a short read: the rest again
        }
      }
    }
    if (prepared > 0) broken_ = true;  // entries the kernel never took must not run on a later call
    if (!error.ok()) return error;
    return eof_at == UINT64_MAX ? size_bytes : std::min(size_bytes, eof_at - offset_bytes);
  }

 private:
  UringOptions options_;
  io_uring ring_{};
  bool ready_ = false;
  bool broken_ = false;
};

}  // namespace

Result<std::unique_ptr<BlockReader>> MakeUringReader(const UringOptions& options) {
  if (options.queue_depth == 0 || options.piece_bytes == 0 || options.piece_bytes % 4096 != 0) {
    return InvalidArgument("io_uring: the queue depth must be positive and the piece size a multiple of 4096");
  }
  auto reader = std::make_unique<UringReader>(options);
  HOIST_RETURN_IF_ERROR(reader->Init());
  return std::unique_ptr<BlockReader>(std::move(reader));
}

#else

Result<std::unique_ptr<BlockReader>> MakeUringReader(const UringOptions&) {
  return NotSupported("this hoist was built without io_uring (liburing was not found)");
}

#endif

bool UringAvailable() {
  static const bool available = MakeUringReader().ok();
  return available;
}

}  // namespace hoist
