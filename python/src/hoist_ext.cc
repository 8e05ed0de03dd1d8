// hoist._hoist: the C++ side of the Python package. It runs a load exactly as
// the CLI does (api/session.h) and hands tensors out zero-copy as DLPack
// arrays (nanobind ndarrays) whose owner is the Model object: device memory
// is returned only when the Model and every array taken from it are gone.
//
// Loads synchronize every device before returning, so an array is complete
// when it is handed out and a consumer's stream never has to wait.
#include <pthread.h>

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <numeric>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <system_error>
#include <thread>
#include <vector>

#include "io/hub_cache.h"
#include "api/session.h"
#include "format/safetensors.h"
#include "hoist/catalog.h"
#include "plan/device_map.h"
#include "util/text.h"

namespace nb = nanobind;

namespace hoist {
namespace {

// Carries a Status across nanobind to the translator below.
struct StatusError : std::exception {
  explicit StatusError(Status s) : status(std::move(s)) {}
  const char* what() const noexcept override { return status.message().c_str(); }
  Status status;
};

template <typename T>
T Unwrap(Result<T> r) {
  if (!r.ok()) throw StatusError(r.status());
  return std::move(r).value();
}

// A JSON document as the Python objects json.loads would make of the CLI's
// text (dict, list, str, int, float, bool, None), built directly: a
// catalogue of 92k tensors skips writing 17 MB of text and parsing it
// again. Text that is not UTF-8 (it cannot come from a checked header) is
// decoded with replacement characters, and a float that is not finite is
// None, as the text form writes them. Like json.loads, one str serves every
// repetition of a key (and here of a short repeated value: a dtype, a file,
// a device), the first few thousand distinct ones.
class JsonToPython {
 public:
  nb::object Convert(const nlohmann::ordered_json& j) {
    switch (j.type()) {
      case nlohmann::json::value_t::object: {
        nb::object out = Steal(PyDict_New());
        for (const auto& [key, value] : j.items()) {
          if (PyDict_SetItem(out.ptr(), Text(key).ptr(), Convert(value).ptr()) != 0) throw nb::python_error();
        }
        return out;
      }
      case nlohmann::json::value_t::array: {
        nb::object out = Steal(PyList_New(static_cast<Py_ssize_t>(j.size())));
        Py_ssize_t k = 0;
        for (const auto& value : j) PyList_SET_ITEM(out.ptr(), k++, Convert(value).release().ptr());
        return out;
      }
      case nlohmann::json::value_t::string: return Text(j.get_ref<const std::string&>());
      case nlohmann::json::value_t::number_unsigned: return Steal(PyLong_FromUnsignedLongLong(j.get<uint64_t>()));
      case nlohmann::json::value_t::number_integer: return Steal(PyLong_FromLongLong(j.get<int64_t>()));
      case nlohmann::json::value_t::number_float: {
        const double v = j.get<double>();
        return std::isfinite(v) ? Steal(PyFloat_FromDouble(v)) : nb::none();
      }
      case nlohmann::json::value_t::boolean: return nb::bool_(j.get<bool>());
      default: return nb::none();  // null (and nlohmann's discarded/binary, which hoist never makes)
    }
  }

 private:
  static constexpr size_t kMaxShared = 4096;
  static nb::object Steal(PyObject* o) {
    if (o == nullptr) throw nb::python_error();
    return nb::steal(o);
  }
  nb::object Text(const std::string& s) {
    if (auto it = shared_.find(s); it != shared_.end()) return it->second;
    nb::object text = Steal(PyUnicode_DecodeUTF8(s.data(), static_cast<Py_ssize_t>(s.size()), "replace"));
    if (shared_.size() < kMaxShared) shared_.emplace(s, text);
    return text;
  }
  std::unordered_map<std::string, nb::object> shared_;
};

// The whole document, with the cyclic garbage collector paused: a tree of
// fresh dicts and lists has no cycles, and collecting while 92k of them are
// made would take as long as making them. The document is freed after,
// with the GIL released.
nb::object ToPython(nlohmann::ordered_json&& j) {
  nb::object out;
  {
#if PY_VERSION_HEX >= 0x030A0000
    struct Paused {
      int was_enabled = PyGC_Disable();
      ~Paused() {
        if (was_enabled) PyGC_Enable();
      }
    } paused;
#endif
    out = JsonToPython().Convert(j);
  }
  nb::gil_scoped_release release;
  nlohmann::ordered_json().swap(j);
  return out;
}

// Whether the interpreter is shutting down: a thread that is not the main
// one and asks for the GIL then is ended by Python (pthread_exit, before
// 3.14), which through a noexcept destructor is std::terminate.
bool Finalizing() {
#if PY_VERSION_HEX >= 0x030D0000
  return Py_IsFinalizing() != 0;
#else
  return _Py_IsFinalizing() != 0;
#endif
}

// Python ends a thread that asks for the GIL once it has begun to shut
// down (only daemon threads can still run then: it joins the others
// first), and from the C++ frames of a load that ending is std::terminate.
// So Python's exit waits for loads: an atexit hook, which Python runs
// before it begins to shut down, cancels every daemon thread's load in
// progress (other threads were joined first, and a load on the thread
// running the exit, under a signal handler, is left alone) and waits, with
// the GIL released so they can take it back, until each has returned to
// Python, or for 10 s at most. Such a load raises SystemExit, which ends
// its thread without a traceback, as Python would have ended it; so does a
// daemon thread's load started once exit has begun, before it releases the
// GIL. A daemon thread whose load outlived the wait never asks for the GIL
// again: it blocks until the process ends. The main thread and non-daemon
// threads, which Python never ends that way, are never held. A module
// imported during exit (its hook would never run) treats exit as begun.
class LoadInProgress;
struct ExitState {
  std::mutex mu;
  std::condition_variable cv;
  bool exit_began = false;           // the hook has started; guarded by mu
  bool exiting = false;              // the hook has finished waiting; guarded by mu
  std::set<LoadInProgress*> loads;   // guarded by mu
};
// Never freed (threads may still use it as the process ends); a forked child,
// which may have inherited `mu` locked, makes a fresh one.
ExitState* exit_state = new ExitState;

// A load in progress, from its start to its return to Python (GIL held at
// both ends). A daemon thread's load started once Python's exit has begun
// is refused with SystemExit before anything runs.
class LoadInProgress {
 public:
  LoadInProgress(std::atomic<bool>& cancel, bool daemon) : cancel_(cancel), daemon_(daemon) {
    ExitState& es = *exit_state;
    bool refuse;
    {
      std::lock_guard<std::mutex> lock(es.mu);
      refuse = es.exit_began && daemon_;
      if (!refuse) es.loads.insert(this);
    }
    if (refuse) {  // never releases the GIL: ends the thread quietly, now
      PyErr_SetNone(PyExc_SystemExit);
      throw nb::python_error();
    }
  }
  // Whether Python's exit cancels and waits for this load: a daemon
  // thread's, not on the thread running the exit (a signal handler that
  // runs the atexit functions from inside a load).
  bool ExitWaitsFor(std::thread::id exiting_thread) const { return daemon_ && owner_ != exiting_thread; }
  ~LoadInProgress() {
    ExitState& es = *exit_state;
    std::lock_guard<std::mutex> lock(es.mu);
    es.loads.erase(this);
    es.cv.notify_all();
  }
  void CancelForExit() {
    by_exit_.store(true);
    cancel_.store(true);
  }
  // Whether Python's exit cancelled this load.
  bool cancelled_by_exit() const { return by_exit_.load(); }
  LoadInProgress(const LoadInProgress&) = delete;
  LoadInProgress& operator=(const LoadInProgress&) = delete;

  // Runs `wait` (which must not throw or touch Python) with the GIL
  // released, then takes the GIL back; on a daemon thread once Python is
  // exiting, never returns.
  template <typename Wait>
  void WithoutGil(Wait&& wait) {
    PyThreadState* state = PyEval_SaveThread();
    wait();
    bool hold;
    {
      std::lock_guard<std::mutex> lock(exit_state->mu);
      hold = daemon_ && (exit_state->exiting || Finalizing());
    }
    if (hold) {
      for (;;) std::this_thread::sleep_for(std::chrono::hours(1));
    }
    PyEval_RestoreThread(state);
  }

 private:
  std::atomic<bool>& cancel_;
  const bool daemon_;
  const std::thread::id owner_ = std::this_thread::get_id();
  std::atomic<bool> by_exit_{false};
};

void AtExit() {
  ExitState& es = *exit_state;
  nb::gil_scoped_release release;
  std::unique_lock<std::mutex> lock(es.mu);
  es.exit_began = true;  // daemon loads started from now on are refused
  const std::thread::id self = std::this_thread::get_id();
  for (LoadInProgress* load : es.loads) {
    if (load->ExitWaitsFor(self)) load->CancelForExit();
  }
  es.cv.wait_for(lock, std::chrono::seconds(10), [&] {
    return std::none_of(es.loads.begin(), es.loads.end(), [&](LoadInProgress* load) { return load->ExitWaitsFor(self); });
  });
  es.exiting = true;
}

// Whether this is the thread Python runs signal handlers on.
bool OnMainThread() {
  nb::module_ threading = nb::module_::import_("threading");
  return threading.attr("current_thread")().is(threading.attr("main_thread")());
}

// Runs `work`, which must not touch Python, on a thread of its own while
// this thread waits with the GIL released. On the main thread, or when
// `on_wake` is wanted (a progress callback), the wait wakes every 20 ms to
// run Python's signal handlers and then `on_wake`, with the GIL. When either
// raises (a KeyboardInterrupt from Ctrl-C; on_wake returns false with a
// Python exception set), `cancel` is set, the work is waited for to its end
// (a load stops before its next read and returns everything it reserved),
// and that exception propagates. An exception `work` throws is rethrown
// here. Elsewhere (another thread, no callback) it waits for the work with
// the GIL released throughout. Every wait takes the GIL back through
// LoadInProgress::WithoutGil, so a daemon thread still loading as Python
// exits is never ended on its way to the GIL. Where no thread can be had,
// the work runs on this one and cannot be interrupted.
template <typename Work, typename OnWake>
void RunInterruptibly(std::atomic<bool>& cancel, Work&& work, bool wants_wake, OnWake&& on_wake) {
  nb::module_ threading = nb::module_::import_("threading");
  LoadInProgress in_progress(cancel, nb::cast<bool>(threading.attr("current_thread")().attr("daemon")));
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  std::exception_ptr thrown;
  auto run = [&] {
    try {
      work();
    } catch (...) {
      thrown = std::current_exception();
    }
  };
  const bool poll_wanted = wants_wake || OnMainThread();
  std::thread worker;
  try {
    worker = std::thread([&] {
      run();
      std::lock_guard<std::mutex> lock(mu);
      done = true;
      cv.notify_all();
    });
  } catch (const std::system_error&) {
    in_progress.WithoutGil([&]() noexcept { run(); });
  }
  // However the wait ends (a C++ exception from on_wake included), the
  // work is stopped and joined before its state goes out of scope.
  struct Join {
    std::thread& worker;
    std::atomic<bool>& cancel;
    LoadInProgress& in_progress;
    ~Join() {
      if (!worker.joinable()) return;
      cancel.store(true);
      in_progress.WithoutGil([&]() noexcept { worker.join(); });
    }
  };
  const bool poll = worker.joinable() && poll_wanted;
  bool interrupted = false;
  if (poll) {
    Join join{worker, cancel, in_progress};
    for (bool finished = false; !finished;) {
      in_progress.WithoutGil([&]() noexcept {
        std::unique_lock<std::mutex> lock(mu);
        finished = cv.wait_for(lock, std::chrono::milliseconds(20), [&] { return done; });
      });
      if (!finished && (PyErr_CheckSignals() != 0 || !on_wake())) {  // its exception is set
        interrupted = true;
        break;
      }
    }
    if (!interrupted) in_progress.WithoutGil([&]() noexcept { worker.join(); });
  } else if (worker.joinable()) {
    in_progress.WithoutGil([&]() noexcept { worker.join(); });
  }  // an interrupted load: cancelled and joined by `join`
  if (interrupted) throw nb::python_error();
  if (thrown && in_progress.cancelled_by_exit()) {
    try {
      std::rethrow_exception(thrown);
    } catch (const StatusError& e) {
      if (e.status.code() != StatusCode::kCancelled) throw;
      PyErr_SetNone(PyExc_SystemExit);  // Python is exiting: this thread ends quietly
      throw nb::python_error();
    }
  }
  if (thrown) std::rethrow_exception(thrown);
}

nb::dlpack::dtype DlpackDtype(DType t) {
  using C = nb::dlpack::dtype_code;
  auto make = [](C code, int bits) {
    nb::dlpack::dtype d;
    d.code = static_cast<uint8_t>(code);
    d.bits = static_cast<uint8_t>(bits);
    d.lanes = 1;
    return d;
  };
  switch (t) {
    case DType::kBool: return make(C::Bool, 8);
    case DType::kU8: return make(C::UInt, 8);
    case DType::kI8: return make(C::Int, 8);
    case DType::kI16: return make(C::Int, 16);
    case DType::kU16: return make(C::UInt, 16);
    case DType::kI32: return make(C::Int, 32);
    case DType::kU32: return make(C::UInt, 32);
    case DType::kI64: return make(C::Int, 64);
    case DType::kU64: return make(C::UInt, 64);
    case DType::kF16: return make(C::Float, 16);
    case DType::kBF16: return make(C::Bfloat, 16);
    case DType::kF32: return make(C::Float, 32);
    case DType::kF64: return make(C::Float, 64);
    case DType::kC64: return make(C::Complex, 64);
    default: return make(C::UInt, 8);  // fp8, fp6, fp4: raw bytes; the real dtype is in info()
  }
}

// Whether the array keeps the tensor's shape (false: 1-D bytes).
bool KeepsShape(DType t) { return DTypeBits(t) >= 8; }

class Model {
 public:
  explicit Model(std::unique_ptr<LoadSession> session) : session_(std::move(session)) {}

  size_t size() const { return session_->model.tensors().size(); }
  std::vector<std::string> keys() const {
    std::vector<std::string> out;
    for (const TensorView& v : session_->model.tensors()) out.push_back(v.name);
    return out;
  }
  bool contains(const std::string& name) const { return session_->model.Find(name) != nullptr; }
  const TensorView& Get(const std::string& name) const {
    const TensorView* v = session_->model.Find(name);
    if (v == nullptr) throw nb::key_error(name.c_str());
    return *v;
  }
  nb::object report() const { return ToPython(ReportJson(*session_)); }

 private:
  std::unique_ptr<LoadSession> session_;
};

// A checkpoint's catalogue, opened once for a caller that looks at its
// names before loading it (load_into): the load then takes it over rather
// than reading the headers again, and plans from the very names looked at.
// It may also start the devices a load of it will use (their CUDA contexts)
// on a thread of its own, so that start-up runs while the caller works out
// what to load; the load waits for that thread first.
struct Checkpoint {
  std::string path;
  std::unique_ptr<Catalog> catalog;  // null once a load has taken it
  std::thread start_devices;

  Checkpoint(std::string p, std::unique_ptr<Catalog> c) : path(std::move(p)), catalog(std::move(c)) {}
  Checkpoint(Checkpoint&&) = default;
  Checkpoint& operator=(Checkpoint&&) = delete;
  ~Checkpoint() {
    // Dropped by Python (an error before the load, say): the GPUs' start-up
    // is waited for without holding up every other Python thread.
    if (start_devices.joinable() && PyGILState_Check()) {
      nb::gil_scoped_release release;
      WaitForDevices();
    }
    WaitForDevices();
  }

  const Catalog& Get() const {
    if (catalog == nullptr) throw StatusError(InvalidArgument(path + ": this opened checkpoint was loaded already"));
    return *catalog;
  }
  void WaitForDevices() {
    if (start_devices.joinable()) start_devices.join();
  }
};

// `path`, or for "org/name" the Hugging Face cache's snapshot of that
// model. Called with the GIL held: it reads the environment, which another
// Python thread may be changing (os.environ), and setenv is not thread-safe.
std::string Resolve(const std::string& path) { return Unwrap(ResolveCheckpointPath(path)); }

// A checkpoint's headers. REQUIRES: `path` was resolved.
Checkpoint Open(std::string path) {
  auto catalog = std::make_unique<Catalog>(Unwrap(OpenCatalog(path)));
  return Checkpoint(std::move(path), std::move(catalog));
}

nb::dict Info(const TensorView& v) {
  nb::dict d;
  d["name"] = v.name;
  d["device"] = v.device.ToString();
  d["dtype"] = std::string(DTypeName(v.dtype));
  d["stored_dtype"] = std::string(DTypeName(v.stored_dtype));
  nb::list shape;
  for (uint64_t s : v.shape) shape.append(s);
  d["shape"] = shape;
  d["nbytes"] = v.size_bytes;
  d["file"] = v.file;
  d["file_offset"] = v.file_offset_bytes;
  d["tied"] = v.tied;
  if (v.tied) d["tied_to"] = v.tied_to;
  d["mapped"] = v.mapped;
  if (v.slice) {
    nb::dict slice;
    slice["dim"] = v.slice->dim;
    slice["start"] = v.slice->start;
    slice["stop"] = v.slice->stop;
    d["slice"] = slice;
  } else {
    d["slice"] = nb::none();
  }
  return d;
}

// Made once, on first need, and never torn down (arrays may outlive the
// module's globals); a cpu-only registry never starts the CUDA driver.
const DeviceRegistry& CpuRegistry() {
  static const DeviceRegistry* cpu_only = new DeviceRegistry(MakeCpuRegistry());
  return *cpu_only;
}

// The registry a load of `request` uses: every GPU where it may use one
// (made on first need, from whichever thread needs it first), else the cpu.
const DeviceRegistry& RegistryFor(const PlanRequest& request) {
  if (!MayUseGpus(request)) return CpuRegistry();
  static std::string warning;
  static const DeviceRegistry* all = new DeviceRegistry(MakeDefaultRegistry(&warning));
  return *all;
}

// A DLPack array over `data` that `owner` keeps alive: the stored shape, or
// (sub-byte types) the raw bytes, row-major.
nb::object ArrayOver(unsigned char* data, DType dtype, const std::vector<uint64_t>& stored_shape, uint64_t size_bytes,
                     int device_type, int device_index, nb::handle owner) {
  std::vector<size_t> shape;
  if (KeepsShape(dtype)) {
    for (uint64_t s : stored_shape) shape.push_back(static_cast<size_t>(s));
  } else {
    shape.push_back(static_cast<size_t>(size_bytes));
  }
  // Row-major strides in elements, counting an empty dimension as 1 as
  // torch does, so a (3, 0, 2) tensor has strides (2, 2, 1), not (0, 2, 1).
  std::vector<int64_t> strides(shape.size());
  int64_t step = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    strides[i] = step;
    step *= static_cast<int64_t>(std::max<size_t>(shape[i], 1));
  }
  nb::ndarray<nb::array_api> array(data, shape.size(), shape.data(), owner, strides.data(), DlpackDtype(dtype),
                                   device_type, device_index);
  return nb::cast(array);
}

nb::object Tensor(nb::handle self, const std::string& name) {
  const Model& model = nb::cast<const Model&>(self);
  const TensorView& v = model.Get(name);
  if (v.device.kind == DeviceKind::kDisk) {
    throw StatusError(InvalidArgument("tensor " + QuoteName(v.name) + " stays on disk (" + v.file +
                                      "); read it from there or place it on a device"));
  }
  int device_type = v.device.kind == DeviceKind::kCuda ? nb::device::cuda::value : nb::device::cpu::value;
  // The owner (the Model) keeps the memory alive as long as the array lives.
  return ArrayOver(const_cast<unsigned char*>(v.data), v.dtype, v.shape, v.size_bytes, device_type, v.device.index,
                   self);
}

// A tensor left in its file, typed where numpy has no type for it (BF16,
// FP8, sub-byte): `raw` is its bytes in a memmap of the file, which the
// array keeps alive.
nb::object TypedView(nb::handle raw, const std::string& stored_dtype, const std::vector<uint64_t>& shape) {
  // No conversion: a converted copy would die with this call while the
  // array handed out points into it.
  using Bytes = nb::ndarray<uint8_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
  Bytes bytes;
  if (!nb::try_cast<Bytes>(raw, bytes, /*convert=*/false)) {
    throw nb::type_error("typed_view: raw must be a contiguous 1-d uint8 array in host memory");
  }
  std::optional<DType> dtype = ParseDTypeName(stored_dtype);
  if (!dtype) throw nb::value_error(("typed_view: unknown dtype " + stored_dtype).c_str());
  const uint64_t elements = std::accumulate(shape.begin(), shape.end(), uint64_t{1}, std::multiplies<>());
  if (elements * static_cast<uint64_t>(DTypeBits(*dtype)) != bytes.size() * 8) {
    throw nb::value_error("typed_view: the bytes do not hold that shape");
  }
  return ArrayOver(bytes.data(), *dtype, shape, bytes.size(), nb::device::cpu::value, 0, raw);
}

}  // namespace
}  // namespace hoist

NB_MODULE(_hoist, m) {
  using namespace hoist;
  m.doc() = "hoist: load model checkpoints at the speed of the hardware (C++ core)";
  // Messages name hoist.load's keyword arguments (device_map), not the
  // command's flags (--device-map).
  SetOptionStyle(OptionStyle::kKeywords);
  // Before Python starts to shut down: loads in progress are cancelled and
  // waited for. A forked child starts with no loads (and a lock of its own).
  nb::module_::import_("atexit").attr("register")(nb::cpp_function([] { AtExit(); }));
  pthread_atfork(nullptr, nullptr, [] { exit_state = new ExitState; });
  // Imported while Python exits (from an atexit function): a hook registered
  // now would never run, so exit has begun for this module's loads.
  if (nb::cast<bool>(nb::getattr(nb::module_::import_("threading"), "_SHUTTING_DOWN", nb::bool_(false)))) {
    exit_state->exit_began = exit_state->exiting = true;
  }

  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const StatusError& e) {
      PyObject* type = PyExc_RuntimeError;
      switch (e.status.code()) {
        case StatusCode::kInvalidArgument:
        case StatusCode::kCorruption:
        case StatusCode::kNotSupported: type = PyExc_ValueError; break;
        case StatusCode::kNotFound: type = PyExc_FileNotFoundError; break;
        case StatusCode::kIoError: type = PyExc_OSError; break;
        case StatusCode::kOutOfMemory: type = PyExc_MemoryError; break;
        default: break;
      }
      PyErr_SetString(type, e.status.message().c_str());
    }
  });

  // Arrays kept in module globals still hold their Model at interpreter exit;
  // that is not a leak worth a warning.
  nb::set_leak_warnings(false);

  nb::class_<Model>(m, "Model", nb::is_weak_referenceable())
      .def("__len__", &Model::size)
      .def("keys", &Model::keys)
      .def("__contains__", &Model::contains)
      .def("tensor", &Tensor, nb::arg("name"), "The tensor as a DLPack-capable array (zero-copy).")
      .def("info", [](const Model& self, const std::string& name) { return Info(self.Get(name)); })
      .def("report", &Model::report);

  nb::class_<Checkpoint>(m, "Checkpoint")
      .def(
          "dtypes",
          [](const Checkpoint& c) {
            std::vector<std::string> out;
            for (const TensorInfo& t : c.Get().tensors()) out.emplace_back(DTypeName(t.dtype));
            return out;
          },
          "Each tensor's stored dtype (BF16, F32, ...), in the catalogue's order.")
      .def(
          "start_devices",
          [](Checkpoint& c, const std::string& device, const std::string& device_map) {
            PlanRequest r;
            r.path = c.path;
            r.device = device;
            r.device_map = device_map;
            if (!MayUseGpus(r) || c.start_devices.joinable()) return;
            try {
              c.start_devices = std::thread([r] { StartDevices(r, RegistryFor(r)); });
            } catch (const std::exception&) {
              // No thread to be had: the load starts the devices itself.
            }
          },
          nb::arg("device") = "", nb::arg("device_map") = "",
          "Starts, on a thread of its own, the devices a load of this checkpoint with this device or device_map "
          "(as load takes them) would use; the load waits for it first.");
  m.def("typed_view", TypedView, nb::arg("raw"), nb::arg("stored_dtype"), nb::arg("shape"),
        "A DLPack array of a tensor's stored dtype over its bytes `raw` (a 1-d uint8 array it keeps alive).");
  m.def(
      "resolve_path", [](const std::string& path) { return Resolve(path); }, nb::arg("path"),
      "The path a load of `path` reads: itself, or for \"org/name\" the Hugging Face cache's snapshot.");
  m.def(
      "open_checkpoint",
      [](const std::string& path) {
        std::string resolved = Resolve(path);
        nb::gil_scoped_release release;
        return Open(std::move(resolved));
      },
      nb::arg("path"), "Opens a checkpoint (reads its headers) for mapped_names and then load.");

  // The names a load with these options would know the checkpoint's tensors
  // by (key mapping applied, --only too), from the headers alone: a plan
  // that expects nothing lists them all as unexpected.
  using Pairs = std::vector<std::pair<std::string, std::string>>;
  auto mapped_names = [](const Checkpoint& checkpoint, const Pairs& renames,
                         const std::vector<std::string>& drops, const std::string& only, const std::string& compat) {
    PlanRequest r;
    r.path = checkpoint.path;
    r.device = "cpu";
    r.renames = renames;
    r.drops = drops;
    r.only = only;
    r.compat = compat;
    r.expect_json = "[]";
    r.no_config_ties = true;
    std::map<DeviceId, uint64_t> max_memory;
    PlanOptions po = Unwrap(MakePlanOptions(r, CpuRegistry(), 0, &max_memory));
    return Unwrap(BuildPlan(checkpoint.Get(), po)).unexpected;
  };
  const char* mapped_doc = "The checkpoint's tensor names after a load's key mapping, from its headers (nothing else is read).";
  m.def("mapped_names", mapped_names, nb::arg("checkpoint"), nb::arg("renames") = Pairs(),
        nb::arg("drops") = std::vector<std::string>(), nb::arg("only") = "", nb::arg("compat") = "", mapped_doc);
  m.def(
      "mapped_names",
      [mapped_names](const std::string& path, const Pairs& renames,
                     const std::vector<std::string>& drops, const std::string& only, const std::string& compat) {
        Checkpoint c = Open(Resolve(path));
        return mapped_names(c, renames, drops, only, compat);
      },
      nb::arg("path"), nb::arg("renames") = Pairs(), nb::arg("drops") = std::vector<std::string>(),
      nb::arg("only") = "", nb::arg("compat") = "", mapped_doc);

  m.def(
      "place_by_map",
      [](const std::vector<std::string>& names, const std::string& device_map) {
        // An explicit device map applied to names, as a load applies it to a
        // checkpoint's: (device per name, warnings for keys that match none).
        std::vector<std::string> warnings;
        std::vector<DeviceId> placed = Unwrap(PlaceByMap(names, Unwrap(ParseDeviceMap(device_map)), &warnings));
        std::vector<std::string> devices;
        devices.reserve(placed.size());
        for (const DeviceId& d : placed) devices.push_back(d.ToString());
        return std::make_pair(devices, warnings);
      },
      nb::arg("names"), nb::arg("device_map"),
      "Each name's device under an explicit device map (JSON, or a file holding it), and the map's warnings.");

  // A load's placement and mapping options, as hoist.load's keywords give
  // them (python/hoist/__init__.py builds one for load and plan).
  nb::class_<PlanRequest>(m, "PlanRequest")
      .def(nb::init<>())
      .def_rw("path", &PlanRequest::path)
      .def_rw("device", &PlanRequest::device)
      .def_rw("device_map", &PlanRequest::device_map)
      .def_rw("max_memory", &PlanRequest::max_memory)
      .def_rw("dtype", &PlanRequest::dtype)
      .def_rw("only", &PlanRequest::only)
      .def_rw("ties", &PlanRequest::ties)
      .def_rw("renames", &PlanRequest::renames)
      .def_rw("drops", &PlanRequest::drops)
      .def_rw("no_split", &PlanRequest::no_split)
      .def_rw("compat", &PlanRequest::compat)
      .def_rw("expect_json", &PlanRequest::expect_json)
      .def_rw("no_config_ties", &PlanRequest::no_config_ties)
      .def_rw("shard", &PlanRequest::shard)
      .def_rw("splits", &PlanRequest::splits)
      .def_rw("map_host", &PlanRequest::map_host)
      .def_rw("strict", &PlanRequest::strict)
      .def_rw("margin", &PlanRequest::margin);

  m.def(
      "convert",
      [](const std::string& src, const std::string& dst, const std::string& dtype, const std::string& only,
         const std::vector<std::pair<std::string, std::string>>& renames, const std::vector<std::string>& drops,
         const std::string& compat, const std::string& max_shard_size, int threads, const std::string& shard,
         const std::vector<std::string>& splits, bool sync) {
        ConvertRequest r{Resolve(src), dst, dtype, only, renames, drops, compat, max_shard_size, threads, shard, splits};
        r.sync = sync;
        std::atomic<bool> cancel{false};
        r.cancel = &cancel;
        WriteResult written;
        // As a load: Ctrl-C stops the write at its next piece, and it
        // removes what it had written before the exception propagates.
        RunInterruptibly(
            cancel, [&] { written = Unwrap(ConvertFromRequest(r)); }, false, [] { return true; });
        nb::dict out;
        out["files"] = written.files;
        out["removed"] = written.removed;
        out["warnings"] = written.warnings;
        out["bytes"] = written.data_bytes;
        out["seconds"] = written.seconds;
        out["sync_seconds"] = written.sync_seconds;
        return out;
      },
      nb::arg("src"), nb::arg("dst"), nb::arg("dtype") = "", nb::arg("only") = "",
      nb::arg("renames") = std::vector<std::pair<std::string, std::string>>(),
      nb::arg("drops") = std::vector<std::string>(), nb::arg("compat") = "", nb::arg("max_shard_size") = "5GB",
      nb::arg("threads") = 0, nb::arg("shard") = "", nb::arg("splits") = std::vector<std::string>(),
      nb::arg("sync") = true,
      "hoist convert: writes `src` rewritten to `dst`; returns the files written, those removed, warnings, bytes, "
      "seconds, sync_seconds.");
  m.def(
      "split_max_memory", [](const std::string& text) { return Unwrap(SplitMaxMemory(text)); }, nb::arg("text"),
      "\"0=20GiB,cpu=64GiB\" as (device, size) pairs.");
  m.def(
      "inspect",
      [](const std::string& path) {
        std::string resolved = Resolve(path);
        nlohmann::ordered_json out;
        {
          nb::gil_scoped_release release;
          Catalog catalog = Unwrap(OpenCatalog(resolved));
          out = CatalogJson(catalog);
          out["warnings"] = catalog.warnings();
        }
        return ToPython(std::move(out));
      },
      nb::arg("path"), "hoist inspect --json, and the catalogue's warnings, as a dict (headers only).");
  m.def(
      "plan",
      [](const PlanRequest& request) {
        PlanRequest r = request;  // Python's object, read while the GIL is held
        r.path = Resolve(request.path);
        nlohmann::ordered_json out;
        {
          nb::gil_scoped_release release;  // finding GPUs can take a while
          const DeviceRegistry& registry = RegistryFor(r);
          PlannedRequest planned = Unwrap(PlanFromRequest(r, registry));
          out = PlanJson(*planned.catalog, planned.plan, &planned.available);
        }
        return ToPython(std::move(out));
      },
      nb::arg("request"), "hoist plan --json as a dict: where a load of `request` would put each tensor.");

  m.def(
      "load",
      [](const PlanRequest& request, const std::string& alloc, int threads, const std::string& io,
         const std::string& direct, const std::string& chunk_size, int staging_buffers, bool pipeline,
         Checkpoint* checkpoint, nb::object progress) {
        LoadRequest r;
        r.plan = request;
        r.plan.path = Resolve(request.path);
        r.alloc = alloc;
        r.threads = threads;
        r.io = io;
        r.direct = direct;
        r.chunk_size = chunk_size;
        r.staging_slots = staging_buffers;
        r.pipeline = pipeline;
        std::unique_ptr<Catalog> opened;
        if (checkpoint != nullptr) {
          checkpoint->Get();  // refuses one a load took already
          opened = std::move(checkpoint->catalog);
        }
        std::unique_ptr<LoadSession> session;
        std::atomic<bool> cancel{false};
        r.cancel = &cancel;
        LoadProgress counters;
        if (!progress.is_none()) r.progress = &counters;
        // The caller's progress(done, total): as soon as the load knows its
        // size, then every 0.1 s or so while it reads. A raise stops the load.
        auto last_call = std::chrono::steady_clock::time_point();
        auto report_progress = [&]() -> bool {
          const uint64_t total = counters.total.load();
          const auto now = std::chrono::steady_clock::now();
          if (progress.is_none() || total == 0 || now - last_call < std::chrono::milliseconds(100)) return true;
          last_call = now;
          try {
            progress(counters.done.load(), total);
          } catch (nb::python_error& e) {
            e.restore();
            return false;
          }
          return true;
        };
        RunInterruptibly(
            cancel,
            [&] {
              if (checkpoint != nullptr) checkpoint->WaitForDevices();
              // A cpu load never starts the CUDA driver.
              session = Unwrap(LoadFromRequest(r, RegistryFor(r.plan), std::move(opened)));
            },
            !progress.is_none(), report_progress);
        // The last call: everything read.
        if (!progress.is_none()) progress(counters.done.load(), counters.total.load());
        return Model(std::move(session));
      },
      nb::arg("request"), nb::arg("alloc") = "reserve", nb::arg("threads") = 0, nb::arg("io") = "pread",
      nb::arg("direct") = "off", nb::arg("chunk_size") = "16MiB", nb::arg("staging_buffers") = 0,
      nb::arg("pipeline") = true, nb::arg("checkpoint").none() = nb::none(), nb::arg("progress").none() = nb::none());
}
