// The router's native data plane: a gRPC server on gRPC's C++ library that relays Router.Generate
// frame by frame without Python, and forwards every other method to the router's Python server.
//
// Why and how the pieces fit is written in router_svc/native_relay.py (the Python face of this
// module). In short: the async completion-queue API (AsyncGenericService, GenericStub::PrepareCall),
// one completion queue and one thread per configured thread; every call is a small state machine
// driven by tags from its queue, so a call's state is only ever touched by one thread and the frame
// path takes no lock and never the GIL. Python is asked what to do through an event queue plus an
// eventfd the asyncio loop watches, and answers through a grpc::Alarm (deadline already passed, so
// it fires at once) on the call's own queue:
//   start  (request bytes, metadata, peer, deadline)   -> proceed (channel, metadata) | finish (status)
//   failed (an upstream status before the first frame) -> proceed (another replica)   | finish (status)
//   done   (final status and the per-stream counters), once per Generate call that reached Python.
//
// Shutdown order (Relay::Shutdown): the server first (after the grace it cancels every call and fails
// every requested one), then every call still waiting for Python is answered "shutting down", then
// the relay waits until the last Call object is gone, and only then shuts the completion queues.
// A call's handler starts new operations on its queue (an upstream Finish after a failed read, the
// client's Finish after the upstream's), and gRPC aborts the process when an operation starts on a
// queue that was shut down and has drained (GPR_ASSERT(grpc_cq_begin_op(...)) in call.cc): shutting
// the queues while calls lived did exactly that, now and then, when a router stopped with streams
// in flight.

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <absl/synchronization/mutex.h>
#include <grpcpp/alarm.h>
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/security/server_credentials.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

const char kRouterGenerate[] = "/expert_router.v1.Router/Generate";
const char kExpertGenerate[] = "/expert_router.v1.Expert/Generate";
// Calls requested in advance on each completion queue: new streams never wait for a free slot.
constexpr int kCallsRequestedPerQueue = 32;

using Metadata = std::vector<std::pair<std::string, std::string>>;

enum class EventKind { kStart, kFailed, kDone };

// What a call tells Python; built on a relay thread (no GIL), turned into a tuple by drain().
struct Event {
  EventKind kind;
  uint64_t id = 0;
  std::string request;
  Metadata metadata;  // start: the client's metadata; failed: the upstream's trailing metadata
  std::string peer;
  double timeout_s = -1;  // start: seconds left before the client's deadline; < 0: none
  int code = 0;
  std::string details;
  uint64_t frames = 0;
  uint64_t bytes = 0;
  double ttft_s = -1;
  std::vector<uint64_t> gaps;
  double gap_sum = 0;
  bool captured = false;
  std::vector<std::string> frames_captured;
};

// What Python answers.
struct Decision {
  bool proceed = false;
  std::shared_ptr<grpc::Channel> channel;
  Metadata metadata;  // sent upstream
  Metadata initial;   // the client's initial metadata (the routing decision)
  bool capture = false;
  int code = 0;
  std::string details;
  Metadata trailers;
};

enum Op { kAccept, kDoneNotify, kClientRead, kClientWrite, kClientFinish, kAlarm,
          kUpStart, kUpWrite, kUpWritesDone, kUpRead, kUpFinish, kOpCount };

class Call;
struct Upstream;

// Bytes of response frames the calls of one completion queue hold (read from upstream, not yet
// written to their client). Only that queue's thread writes it (a plain load and store, no locked
// instruction on the frame path); Python reads the sum over queues. Its own cache line: the
// queues' threads never share one.
struct alignas(64) HeldBytes {
  std::atomic<int64_t> value{0};
};

struct Tag {
  Call* call;
  Upstream* upstream;  // null for the server side's operations
  Op op;
};

// One attempt at an upstream call. Attempts live as long as their Call: a late completion of an
// abandoned attempt still finds its context alive.
struct Upstream {
  grpc::ClientContext context;
  std::unique_ptr<grpc::GenericClientAsyncReaderWriter> stream;
  grpc::Status status;
  Tag tags[kOpCount];
};

std::string Flatten(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  std::string out;
  if (!buffer.Dump(&slices).ok()) return out;
  out.reserve(buffer.Length());
  for (const auto& slice : slices) out.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
  return out;
}

bool Forwardable(const grpc::string_ref& key) {
  // Transport headers are the library's own; everything else (authorization, x-request-id, ...) goes on.
  if (key.empty() || key.data()[0] == ':') return false;
  if (key.starts_with("grpc-")) return false;
  static const char* const kSkipped[] = {"user-agent", "te", "content-type", "host"};
  for (const char* skipped : kSkipped)
    if (key == skipped) return false;
  return true;
}

class Relay;

// Counts a Call as alive from its construction until after its last member (its server context,
// its upstream attempts, its alarm) is destroyed: declared first in Call, so destroyed last.
class LiveCall {
 public:
  explicit LiveCall(Relay* relay);
  ~LiveCall();
  LiveCall(const LiveCall&) = delete;
  LiveCall& operator=(const LiveCall&) = delete;

 private:
  Relay* relay_;
};

class Call {
 public:
  Call(Relay* relay, grpc::ServerCompletionQueue* cq, HeldBytes* held)
      : live_(relay), relay_(relay), cq_(cq), held_bytes_(held), stream_(&context_) {
    for (int op = 0; op < kOpCount; ++op) tags_[op] = {this, nullptr, static_cast<Op>(op)};
  }
  ~Call() { Hold(-held_); }

  void Request();
  void Handle(const Tag& tag, bool ok);
  void Decide(Decision&& decision);  // under the relay's lock: Python's thread, or shutdown's
  uint64_t id() const { return id_; }

 private:
  void HandleGenerate(Op op, bool ok);
  void HandleForward(Op op, bool ok);
  void HandleUpstream(Op op, bool ok);
  void ClientWriteDone(bool ok);
  void AwaitDecision(Event&& event);
  Upstream* OpenUpstream(const std::shared_ptr<grpc::Channel>& channel, const std::string& method);
  void ReadUpstream();
  void WriteClient();
  void FinishClient(const grpc::Status& status);
  void FinishFromUpstream();
  void Post(EventKind kind);
  void MaybeDelete();
  void Hold(int64_t bytes) {
    held_ += bytes;
    held_bytes_->value.store(held_bytes_->value.load(std::memory_order_relaxed) + bytes, std::memory_order_relaxed);
  }

  LiveCall live_;  // first: outlives every other member
  Relay* relay_;
  grpc::ServerCompletionQueue* cq_;
  HeldBytes* held_bytes_;
  grpc::GenericServerContext context_;
  grpc::GenericServerAsyncReaderWriter stream_;
  Tag tags_[kOpCount];
  grpc::Alarm alarm_;
  Decision decision_;
  std::vector<std::unique_ptr<Upstream>> attempts_;
  Upstream* upstream_ = nullptr;
  grpc::ByteBuffer request_;
  grpc::ByteBuffer read_buffer_;
  grpc::ByteBuffer write_buffer_;
  Metadata initial_;
  uint64_t id_ = 0;
  int64_t held_ = 0;           // bytes of the frames below that this call holds
  int64_t writing_bytes_ = 0;  // the frame being written to the client
  int pending_ = 0;
  bool accepted_ = false;
  bool generate_ = false;
  bool reported_ = false;  // Python knows this call: it gets a done event
  bool cancelled_ = false;
  bool client_broken_ = false;
  bool writing_ = false;
  bool frame_waiting_ = false;
  bool upstream_done_ = false;
  bool finishing_ = false;
  bool finished_ = false;
  bool capture_ = false;
  int final_code_ = 0;
  Clock::time_point received_;
  Clock::time_point last_frame_;
  uint64_t frames_ = 0;
  uint64_t bytes_ = 0;
  double ttft_s_ = -1;
  double gap_sum_ = 0;
  std::vector<uint64_t> gaps_;
  std::vector<std::string> captured_;
};

class Relay {
 public:
  Relay() = default;
  ~Relay() { Shutdown(0); if (event_fd_ >= 0) close(event_fd_); }

  // Returns the bound port, or 0 with ``error`` set.
  int Start(const std::string& listen, int threads, const std::string& forward_target,
            std::shared_ptr<grpc::ServerCredentials> credentials, int max_message_bytes, bool reuse_port,
            std::vector<double> itl_bounds, std::string* error) {
    event_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (event_fd_ < 0) { *error = "eventfd failed"; return 0; }
    itl_bounds_ = std::move(itl_bounds);
    grpc::ChannelArguments forward_args;
    forward_args.SetMaxReceiveMessageSize(max_message_bytes);
    forward_args.SetMaxSendMessageSize(max_message_bytes);
    forward_args.SetInt(GRPC_ARG_ENABLE_RETRIES, 0);  // as on the upstream channels (PyRelay_channel)
    forward_args.SetInt(GRPC_ARG_ENABLE_PER_MESSAGE_COMPRESSION, 0);
    forward_ = grpc::CreateCustomChannel(forward_target, grpc::InsecureChannelCredentials(), forward_args);
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort(listen, credentials, &port);
    builder.RegisterAsyncGenericService(&service_);
    builder.SetMaxReceiveMessageSize(max_message_bytes);
    builder.SetMaxSendMessageSize(max_message_bytes);
    builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, reuse_port ? 1 : 0);
    builder.AddChannelArgument("grpc.http2.min_ping_interval_without_data_ms", 10000);
    builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
    // Frames pass through as the expert's bytes and the relay never compresses them, so the
    // compression filter (a step of every batch, message_compress_filter.cc, enabled unless this
    // is 0) has nothing to do. Decompression stays: a client may compress its request.
    builder.AddChannelArgument(GRPC_ARG_ENABLE_PER_MESSAGE_COMPRESSION, 0);
    for (int i = 0; i < threads; ++i) {
      queues_.push_back(builder.AddCompletionQueue());
      held_.push_back(std::make_unique<HeldBytes>());
    }
    server_ = builder.BuildAndStart();
    if (!server_ || port == 0) {
      *error = "cannot listen on " + listen + ": address in use or not available";
      if (server_) server_->Shutdown();  // a server goes before the queues it uses (no call exists yet)
      server_.reset();
      for (auto& queue : queues_) queue->Shutdown();
      DrainQueues();
      queues_.clear();
      return 0;
    }
    for (size_t q = 0; q < queues_.size(); ++q) {
      grpc::ServerCompletionQueue* queue = queues_[q].get();
      for (int i = 0; i < kCallsRequestedPerQueue; ++i) (new Call(this, queue, held_[q].get()))->Request();
      threads_.emplace_back([q = queue] {
        void* tag;
        bool ok;
        while (q->Next(&tag, &ok)) {
          auto* t = static_cast<Tag*>(tag);
          t->call->Handle(*t, ok);
        }
      });
    }
    running_ = true;
    return port;
  }

  // Stops accepting, lets calls end until ``grace_s`` has passed, then cancels the rest; returns
  // once every call has ended and the relay threads have stopped. A second call (from any thread)
  // waits for the first and returns.
  void Shutdown(double grace_s) {
    std::lock_guard<std::mutex> once(shutdown_mutex_);
    if (!running_) return;
    running_ = false;
    auto deadline = std::chrono::system_clock::now() +
                    std::chrono::microseconds(static_cast<int64_t>(std::max(grace_s, 0.0) * 1e6));
    // After the grace every server call is cancelled and every requested call fails; the queues
    // stay open, so the calls' handlers still run and end their calls.
    server_->Shutdown(deadline);
    {
      // Calls waiting for Python get their answer now: Python's later answers are refused, and a
      // call that asks from here on is answered at once (Wait).
      std::lock_guard<std::mutex> lock(mutex_);
      closed_ = true;
      for (auto& [id, call] : waiting_) call->Decide(ShuttingDown());
      waiting_.clear();
    }
    WaitForCalls();
    // No call is left to start an operation: the queues can be shut down and drained.
    for (auto& queue : queues_) queue->Shutdown();
    for (auto& thread : threads_) thread.join();
    threads_.clear();
    server_.reset();
    queues_.clear();
  }

  // Python side -----------------------------------------------------------------------------------

  bool Answer(uint64_t id, Decision&& decision) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (closed_) return false;
    auto it = waiting_.find(id);
    if (it == waiting_.end()) return false;
    Call* call = it->second;
    waiting_.erase(it);
    call->Decide(std::move(decision));
    return true;
  }

  std::vector<Event> TakeEvents() {
    uint64_t count;
    while (read(event_fd_, &count, sizeof count) > 0) {
    }
    std::vector<Event> taken;
    std::lock_guard<std::mutex> lock(mutex_);
    taken.swap(events_);
    return taken;
  }

  int event_fd() const { return event_fd_; }
  // Response bytes held by all calls now: at most two frames per stream (one being written to
  // the client, one read and waiting for that write); a client that stops reading stops its
  // upstream through HTTP/2 flow control instead of growing this.
  int64_t held_bytes() const {
    int64_t total = 0;
    for (const auto& held : held_) total += held->value.load(std::memory_order_relaxed);
    return total;
  }
  size_t waiting() {
    std::lock_guard<std::mutex> lock(mutex_);
    return waiting_.size();
  }
  // Call objects alive: requested (waiting for a client), in flight, or ending. 0 after Shutdown.
  int64_t live_calls() {
    std::lock_guard<std::mutex> lock(calls_mutex_);
    return live_calls_;
  }

  // Relay threads ---------------------------------------------------------------------------------

  // Registers ``call`` as waiting for Python and returns true; once shutting down, answers it at
  // once ("shutting down") and returns false: Python is not asked.
  bool Wait(Call* call) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (closed_) {
      call->Decide(ShuttingDown());
      return false;
    }
    waiting_[call->id()] = call;
    return true;
  }

  void CallCreated() {
    std::lock_guard<std::mutex> lock(calls_mutex_);
    ++live_calls_;
  }
  void CallDestroyed() {
    std::lock_guard<std::mutex> lock(calls_mutex_);
    if (--live_calls_ == 0) calls_ended_.notify_all();
  }

  void Post(Event&& event) {
    bool wake;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      wake = events_.empty();
      events_.push_back(std::move(event));
    }
    if (wake) {
      uint64_t one = 1;
      ssize_t written = write(event_fd_, &one, sizeof one);
      (void)written;  // a full counter already means "wake up"
    }
  }

  uint64_t NextId() { return next_id_.fetch_add(1, std::memory_order_relaxed); }
  const std::vector<double>& itl_bounds() const { return itl_bounds_; }
  grpc::AsyncGenericService& service() { return service_; }
  const std::shared_ptr<grpc::Channel>& forward() const { return forward_; }

 private:
  static Decision ShuttingDown() {
    Decision decision;
    decision.code = grpc::StatusCode::UNAVAILABLE;
    decision.details = "the router is shutting down; retry on another router";
    return decision;
  }

  // Every call ends by itself once the server is shut down (its server call cancelled, its
  // upstream cancelled in turn, its decision given): this only waits. A wait that lasts says so
  // on stderr rather than shutting the queues under live calls, which would abort the process.
  void WaitForCalls() {
    std::unique_lock<std::mutex> lock(calls_mutex_);
    while (!calls_ended_.wait_for(lock, std::chrono::seconds(10), [this] { return live_calls_ == 0; }))
      fprintf(stderr, "router_svc._relay: shutdown still waiting for %lld call(s) to end\n",
              static_cast<long long>(live_calls_));
  }

  void DrainQueues() {
    for (auto& queue : queues_) {
      void* tag;
      bool ok;
      while (queue->Next(&tag, &ok)) {
      }
    }
  }

  grpc::AsyncGenericService service_;
  std::unique_ptr<grpc::Server> server_;
  std::vector<std::unique_ptr<grpc::ServerCompletionQueue>> queues_;
  std::vector<std::unique_ptr<HeldBytes>> held_;  // one per queue, kept after shutdown (read by Python)
  std::vector<std::thread> threads_;
  std::shared_ptr<grpc::Channel> forward_;
  std::vector<double> itl_bounds_;
  std::mutex shutdown_mutex_;  // one Shutdown at a time
  std::mutex calls_mutex_;
  std::condition_variable calls_ended_;
  int64_t live_calls_ = 0;
  std::mutex mutex_;
  std::unordered_map<uint64_t, Call*> waiting_;
  std::vector<Event> events_;
  std::atomic<uint64_t> next_id_{1};
  int event_fd_ = -1;
  bool closed_ = false;
  bool running_ = false;
};

// Call -------------------------------------------------------------------------------------------

LiveCall::LiveCall(Relay* relay) : relay_(relay) { relay_->CallCreated(); }
LiveCall::~LiveCall() { relay_->CallDestroyed(); }

void Call::Request() {
  // Must precede the request; delivered only for a call that starts (grpc/grpc#10136).
  context_.AsyncNotifyWhenDone(&tags_[kDoneNotify]);
  ++pending_;
  relay_->service().RequestCall(&context_, &stream_, cq_, cq_, &tags_[kAccept]);
}

void Call::Decide(Decision&& decision) {
  decision_ = std::move(decision);
  // A deadline in the past, not "now": gRPC rounds an alarm's deadline up to the next millisecond,
  // so "now" lands in the timer heap and fires on the next timer check, 0.65-0.85 ms later
  // (measured, docs/profiles/router.md). An expired deadline posts the tag at once, from this thread.
  alarm_.Set(cq_, gpr_inf_past(GPR_CLOCK_MONOTONIC), &tags_[kAlarm]);
}

void Call::Handle(const Tag& tag, bool ok) {
  --pending_;
  if (tag.op == kAccept) {
    if (!ok) {  // the server is shutting down
      delete this;
      return;
    }
    (new Call(relay_, cq_, held_bytes_))->Request();
    accepted_ = true;
    ++pending_;  // the done notification: always delivered for an accepted call
    generate_ = context_.method() == kRouterGenerate;
    if (generate_) {
      ++pending_;
      stream_.Read(&request_, &tags_[kClientRead]);
    } else {
      Upstream* upstream = OpenUpstream(relay_->forward(), context_.method());
      (void)upstream;
      ++pending_;
      stream_.Read(&request_, &tags_[kClientRead]);
      ReadUpstream();
    }
  } else if (tag.op == kDoneNotify) {
    if (context_.IsCancelled()) {
      cancelled_ = true;
      if (upstream_ != nullptr) upstream_->context.TryCancel();
    }
  } else if (tag.op == kClientFinish) {
    finished_ = true;
    if (reported_) Post(EventKind::kDone);
  } else if (tag.upstream != nullptr) {
    if (tag.upstream == upstream_) HandleUpstream(tag.op, ok);  // else: an abandoned attempt's late news
  } else if (generate_) {
    HandleGenerate(tag.op, ok);
  } else {
    HandleForward(tag.op, ok);
  }
  MaybeDelete();
}

void Call::MaybeDelete() {
  if (pending_ == 0 && finished_) delete this;
}

Upstream* Call::OpenUpstream(const std::shared_ptr<grpc::Channel>& channel, const std::string& method) {
  attempts_.push_back(std::make_unique<Upstream>());
  Upstream* upstream = attempts_.back().get();
  for (int op = 0; op < kOpCount; ++op) upstream->tags[op] = {this, upstream, static_cast<Op>(op)};
  gpr_timespec deadline = context_.raw_deadline();
  if (gpr_time_cmp(deadline, gpr_inf_future(deadline.clock_type)) != 0) upstream->context.set_deadline(deadline);
  if (generate_) {
    for (const auto& [key, value] : decision_.metadata) upstream->context.AddMetadata(key, value);
  } else {
    for (const auto& [key, value] : context_.client_metadata())
      if (Forwardable(key)) upstream->context.AddMetadata(std::string(key.data(), key.size()),
                                                           std::string(value.data(), value.size()));
  }
  // Corked: the initial metadata leaves with the first message (one write instead of two). StartCall
  // then performs nothing and delivers no tag, and the first Write may follow it at once.
  upstream->context.set_initial_metadata_corked(true);
  grpc::GenericStub stub(channel);
  upstream->stream = stub.PrepareCall(&upstream->context, method, cq_);
  upstream_ = upstream;
  upstream_done_ = false;
  upstream->stream->StartCall(&upstream->tags[kUpStart]);
  return upstream;
}

void Call::ReadUpstream() {
  ++pending_;
  upstream_->stream->Read(&read_buffer_, &upstream_->tags[kUpRead]);
}

void Call::WriteClient() {
  writing_ = true;
  writing_bytes_ = static_cast<int64_t>(write_buffer_.Length());
  ++pending_;
  stream_.Write(write_buffer_, &tags_[kClientWrite]);
}

void Call::FinishClient(const grpc::Status& status) {
  final_code_ = status.error_code();
  ++pending_;
  stream_.Finish(status, &tags_[kClientFinish]);
}

void Call::AwaitDecision(Event&& event) {
  event.id = id_;
  ++pending_;  // the alarm set with the answer (Python's, or the relay's own when shutting down)
  if (relay_->Wait(this)) relay_->Post(std::move(event));
}

void Call::Post(EventKind kind) {
  Event event{kind};
  event.id = id_;
  event.code = cancelled_ ? grpc::StatusCode::CANCELLED : final_code_;
  event.frames = frames_;
  event.bytes = bytes_;
  event.ttft_s = ttft_s_;
  event.gaps = std::move(gaps_);
  event.gap_sum = gap_sum_;
  event.captured = capture_;
  event.frames_captured = std::move(captured_);
  relay_->Post(std::move(event));
}

void Call::HandleGenerate(Op op, bool ok) {
  switch (op) {
    case kClientRead: {
      if (!ok) {  // the client went away or half-closed without a request
        FinishClient(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                  "Generate expects one GenerateRequest message"));
        return;
      }
      received_ = Clock::now();
      id_ = relay_->NextId();
      reported_ = true;
      Event event{EventKind::kStart};
      event.request = Flatten(request_);
      for (const auto& [key, value] : context_.client_metadata())
        event.metadata.emplace_back(std::string(key.data(), key.size()), std::string(value.data(), value.size()));
      event.peer = context_.peer();
      auto deadline = context_.deadline();
      if (deadline != std::chrono::system_clock::time_point::max())
        event.timeout_s = std::chrono::duration<double>(deadline - std::chrono::system_clock::now()).count();
      AwaitDecision(std::move(event));
      return;
    }
    case kAlarm: {
      Decision decision = std::move(decision_);
      if (!decision.proceed) {
        for (const auto& [key, value] : decision.trailers) context_.AddTrailingMetadata(key, value);
        FinishClient(grpc::Status(static_cast<grpc::StatusCode>(decision.code), decision.details));
      } else if (cancelled_) {
        FinishClient(grpc::Status(grpc::StatusCode::CANCELLED, "the client cancelled"));
      } else {
        decision_ = std::move(decision);
        initial_ = std::move(decision_.initial);
        capture_ = decision_.capture;
        if (gaps_.empty()) gaps_.assign(relay_->itl_bounds().size(), 0);
        Upstream* upstream = OpenUpstream(decision_.channel, kExpertGenerate);
        ++pending_;
        upstream->stream->Write(request_, grpc::WriteOptions().set_last_message(), &upstream->tags[kUpWrite]);
        ReadUpstream();
        decision_ = Decision();
      }
      return;
    }
    case kClientWrite:
      ClientWriteDone(ok);
      return;
    default:
      return;
  }
}

void Call::HandleForward(Op op, bool ok) {
  switch (op) {
    case kClientRead:
      if (upstream_done_ || upstream_ == nullptr) return;
      ++pending_;
      if (ok) {
        upstream_->stream->Write(request_, &upstream_->tags[kUpWrite]);
      } else {
        upstream_->stream->WritesDone(&upstream_->tags[kUpWritesDone]);
      }
      return;
    case kClientWrite:
      ClientWriteDone(ok);
      return;
    default:
      return;
  }
}

// A frame reached the client (or the client is gone): send the frame read meanwhile and read the
// next one, so one write and one read stay in flight; the status goes out after the last write.
void Call::ClientWriteDone(bool ok) {
  writing_ = false;
  Hold(-writing_bytes_);
  writing_bytes_ = 0;
  if (!ok) {
    client_broken_ = true;
    if (upstream_ != nullptr) upstream_->context.TryCancel();
    if (frame_waiting_) {
      // The client stopped reading and then left: reads had stopped for flow control, so drop the
      // waiting frame and read on until the cancel ends the upstream call (else its status, and
      // the end of this call, would never come).
      frame_waiting_ = false;
      Hold(-static_cast<int64_t>(read_buffer_.Length()));
      if (!upstream_done_ && upstream_ != nullptr) ReadUpstream();
    }
  } else if (frame_waiting_) {
    frame_waiting_ = false;
    read_buffer_.Swap(&write_buffer_);
    WriteClient();
    ReadUpstream();
    return;
  }
  if (upstream_done_) FinishFromUpstream();
}

void Call::HandleUpstream(Op op, bool ok) {
  switch (op) {
    case kUpWrite:
      // Forwarding: the next client message once this one is out (one write in flight).
      if (!generate_ && ok && !upstream_done_) {
        ++pending_;
        stream_.Read(&request_, &tags_[kClientRead]);
      }
      return;
    case kUpRead: {
      if (!ok) {
        ++pending_;
        upstream_->stream->Finish(&upstream_->status, &upstream_->tags[kUpFinish]);
        return;
      }
      if (client_broken_ || cancelled_) {  // nobody to give it to: keep draining until the cancel lands
        ReadUpstream();
        return;
      }
      Clock::time_point now = Clock::now();
      if (frames_ == 0) {
        if (generate_) {
          ttft_s_ = std::chrono::duration<double>(now - received_).count();
          for (const auto& [key, value] : initial_) context_.AddInitialMetadata(key, value);
        } else {
          for (const auto& [key, value] : upstream_->context.GetServerInitialMetadata())
            context_.AddInitialMetadata(std::string(key.data(), key.size()), std::string(value.data(), value.size()));
        }
      } else if (generate_) {
        double gap = std::chrono::duration<double>(now - last_frame_).count();
        const auto& bounds = relay_->itl_bounds();
        size_t bucket = std::lower_bound(bounds.begin(), bounds.end(), gap) - bounds.begin();
        if (bucket < gaps_.size()) ++gaps_[bucket];
        gap_sum_ += gap;
      }
      last_frame_ = now;
      ++frames_;
      bytes_ += read_buffer_.Length();
      Hold(static_cast<int64_t>(read_buffer_.Length()));
      if (capture_) captured_.push_back(Flatten(read_buffer_));
      if (writing_) {
        frame_waiting_ = true;  // flow control: no further read until the client took this frame
      } else {
        read_buffer_.Swap(&write_buffer_);
        WriteClient();
        ReadUpstream();
      }
      return;
    }
    case kUpFinish:
      upstream_done_ = true;
      if (generate_ && frames_ == 0 && !upstream_->status.ok() && !cancelled_ && !client_broken_) {
        // Nothing reached the client yet: Python may send the request elsewhere.
        Event event{EventKind::kFailed};
        event.code = upstream_->status.error_code();
        event.details = upstream_->status.error_message();
        for (const auto& [key, value] : upstream_->context.GetServerTrailingMetadata())
          event.metadata.emplace_back(std::string(key.data(), key.size()), std::string(value.data(), value.size()));
        upstream_ = nullptr;
        AwaitDecision(std::move(event));
        return;
      }
      if (!writing_) FinishFromUpstream();
      return;
    default:
      return;
  }
}

void Call::FinishFromUpstream() {
  if (finishing_ || upstream_ == nullptr) return;
  finishing_ = true;
  Upstream* upstream = upstream_;
  upstream_ = nullptr;  // finished: a later done notification has nothing to cancel
  const grpc::Status& status = upstream->status;
  if (generate_) {
    if (frames_ == 0 && status.ok())
      for (const auto& [key, value] : initial_) context_.AddInitialMetadata(key, value);
    if (!status.ok())
      for (const auto& [key, value] : upstream->context.GetServerTrailingMetadata())
        context_.AddTrailingMetadata(std::string(key.data(), key.size()), std::string(value.data(), value.size()));
  } else {
    if (frames_ == 0)
      for (const auto& [key, value] : upstream->context.GetServerInitialMetadata())
        context_.AddInitialMetadata(std::string(key.data(), key.size()), std::string(value.data(), value.size()));
    for (const auto& [key, value] : upstream->context.GetServerTrailingMetadata())
      context_.AddTrailingMetadata(std::string(key.data(), key.size()), std::string(value.data(), value.size()));
  }
  FinishClient(status);
}

// Python bindings --------------------------------------------------------------------------------

struct PyRelay {
  PyObject_HEAD
  Relay* relay;
  std::unordered_map<long long, std::shared_ptr<grpc::Channel>>* channels;
  long long next_channel;
};

PyObject* MetadataToPython(const Metadata& metadata) {
  PyObject* list = PyList_New(static_cast<Py_ssize_t>(metadata.size()));
  if (list == nullptr) return nullptr;
  for (size_t i = 0; i < metadata.size(); ++i) {
    const auto& [key, value] = metadata[i];
    bool binary = key.size() > 4 && key.compare(key.size() - 4, 4, "-bin") == 0;
    PyObject* item = binary ? Py_BuildValue("(s#y#)", key.data(), (Py_ssize_t)key.size(), value.data(),
                                            (Py_ssize_t)value.size())
                            : Py_BuildValue("(s#s#)", key.data(), (Py_ssize_t)key.size(), value.data(),
                                            (Py_ssize_t)value.size());
    if (item == nullptr) {
      // Not UTF-8: hand the bytes over rather than failing the whole drain.
      PyErr_Clear();
      item = Py_BuildValue("(s#y#)", key.data(), (Py_ssize_t)key.size(), value.data(), (Py_ssize_t)value.size());
      if (item == nullptr) {
        Py_DECREF(list);
        return nullptr;
      }
    }
    PyList_SET_ITEM(list, static_cast<Py_ssize_t>(i), item);
  }
  return list;
}

bool MetadataFromPython(PyObject* sequence, Metadata* out) {
  PyObject* fast = PySequence_Fast(sequence, "metadata must be a sequence of (key, value) pairs");
  if (fast == nullptr) return false;
  Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* pair = PySequence_Fast_GET_ITEM(fast, i);
    const char* key;
    Py_ssize_t key_size;
    PyObject* value;
    if (!PyArg_ParseTuple(pair, "s#O", &key, &key_size, &value)) {
      Py_DECREF(fast);
      return false;
    }
    std::string text;
    if (PyBytes_Check(value)) {
      text.assign(PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value));
    } else if (PyUnicode_Check(value)) {
      Py_ssize_t size;
      const char* data = PyUnicode_AsUTF8AndSize(value, &size);
      if (data == nullptr) {
        Py_DECREF(fast);
        return false;
      }
      text.assign(data, size);
    } else {
      PyErr_SetString(PyExc_TypeError, "metadata values must be str or bytes");
      Py_DECREF(fast);
      return false;
    }
    out->emplace_back(std::string(key, key_size), std::move(text));
  }
  Py_DECREF(fast);
  return true;
}

PyObject* EventToPython(Event& event) {
  switch (event.kind) {
    case EventKind::kStart: {
      PyObject* metadata = MetadataToPython(event.metadata);
      if (metadata == nullptr) return nullptr;
      PyObject* timeout = event.timeout_s < 0 ? Py_NewRef(Py_None) : PyFloat_FromDouble(event.timeout_s);
      PyObject* tuple = Py_BuildValue("(sKy#NsN)", "start", (unsigned long long)event.id, event.request.data(),
                                      (Py_ssize_t)event.request.size(), metadata, event.peer.c_str(), timeout);
      return tuple;
    }
    case EventKind::kFailed: {
      PyObject* trailers = MetadataToPython(event.metadata);
      if (trailers == nullptr) return nullptr;
      PyObject* details = PyUnicode_DecodeUTF8(event.details.data(), event.details.size(), "replace");
      return Py_BuildValue("(sKiNN)", "failed", (unsigned long long)event.id, event.code, details, trailers);
    }
    case EventKind::kDone: {
      PyObject* gaps = PyList_New(static_cast<Py_ssize_t>(event.gaps.size()));
      for (size_t i = 0; i < event.gaps.size(); ++i)
        PyList_SET_ITEM(gaps, i, PyLong_FromUnsignedLongLong(event.gaps[i]));
      PyObject* captured;
      if (event.captured) {
        captured = PyList_New(static_cast<Py_ssize_t>(event.frames_captured.size()));
        for (size_t i = 0; i < event.frames_captured.size(); ++i)
          PyList_SET_ITEM(captured, i, PyBytes_FromStringAndSize(event.frames_captured[i].data(),
                                                                 event.frames_captured[i].size()));
      } else {
        captured = Py_NewRef(Py_None);
      }
      PyObject* ttft = event.ttft_s < 0 ? Py_NewRef(Py_None) : PyFloat_FromDouble(event.ttft_s);
      return Py_BuildValue("(sKiKKNNdN)", "done", (unsigned long long)event.id, event.code,
                           (unsigned long long)event.frames, (unsigned long long)event.bytes, ttft, gaps,
                           event.gap_sum, captured);
    }
  }
  Py_RETURN_NONE;
}

int PyRelay_init(PyRelay* self, PyObject*, PyObject*) {
  self->relay = new Relay();
  self->channels = new std::unordered_map<long long, std::shared_ptr<grpc::Channel>>();
  self->next_channel = 1;
  return 0;
}

void PyRelay_dealloc(PyRelay* self) {
  if (self->relay != nullptr) {
    Py_BEGIN_ALLOW_THREADS
    delete self->relay;
    Py_END_ALLOW_THREADS
  }
  delete self->channels;
  Py_TYPE(self)->tp_free(reinterpret_cast<PyObject*>(self));
}

// start(listen, threads, forward_target, tls, max_message_bytes, reuse_port, itl_bounds) -> port
// tls: None, or (cert_pem, key_pem, client_ca_pem or None, require_client_cert)
PyObject* PyRelay_start(PyRelay* self, PyObject* args) {
  const char* listen;
  int threads;
  const char* forward;
  PyObject* tls;
  int max_message_bytes;
  int reuse_port;
  PyObject* bounds_object;
  if (!PyArg_ParseTuple(args, "sisOipO", &listen, &threads, &forward, &tls, &max_message_bytes, &reuse_port,
                        &bounds_object))
    return nullptr;
  std::shared_ptr<grpc::ServerCredentials> credentials;
  if (tls == Py_None) {
    credentials = grpc::InsecureServerCredentials();
  } else {
    const char *cert, *key, *ca;
    Py_ssize_t cert_size, key_size, ca_size = 0;
    int require;
    if (!PyArg_ParseTuple(tls, "y#y#z#p", &cert, &cert_size, &key, &key_size, &ca, &ca_size, &require))
      return nullptr;
    grpc::SslServerCredentialsOptions options(
        ca == nullptr ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
        : require     ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                      : GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_AND_VERIFY);
    if (ca != nullptr) options.pem_root_certs.assign(ca, ca_size);
    options.pem_key_cert_pairs.push_back({std::string(key, key_size), std::string(cert, cert_size)});
    credentials = grpc::SslServerCredentials(options);
  }
  std::vector<double> bounds;
  PyObject* fast = PySequence_Fast(bounds_object, "itl_bounds must be a sequence of floats");
  if (fast == nullptr) return nullptr;
  for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(fast); ++i)
    bounds.push_back(PyFloat_AsDouble(PySequence_Fast_GET_ITEM(fast, i)));
  Py_DECREF(fast);
  if (PyErr_Occurred()) return nullptr;
  std::string error;
  int port;
  std::string listen_text(listen), forward_text(forward);
  Py_BEGIN_ALLOW_THREADS
  port = self->relay->Start(listen_text, std::max(threads, 1), forward_text, credentials, max_message_bytes,
                            reuse_port != 0, std::move(bounds), &error);
  Py_END_ALLOW_THREADS
  if (port == 0) {
    PyErr_SetString(PyExc_OSError, error.c_str());
    return nullptr;
  }
  return PyLong_FromLong(port);
}

PyObject* PyRelay_fileno(PyRelay* self, PyObject*) { return PyLong_FromLong(self->relay->event_fd()); }

PyObject* PyRelay_drain(PyRelay* self, PyObject*) {
  std::vector<Event> events = self->relay->TakeEvents();
  PyObject* list = PyList_New(static_cast<Py_ssize_t>(events.size()));
  if (list == nullptr) return nullptr;
  for (size_t i = 0; i < events.size(); ++i) {
    PyObject* item = EventToPython(events[i]);
    if (item == nullptr) {
      Py_DECREF(list);
      return nullptr;
    }
    PyList_SET_ITEM(list, static_cast<Py_ssize_t>(i), item);
  }
  return list;
}

// channel(target, root_pem or None, cert_pem or None, key_pem or None, server_name or None, tls,
//         max_message_bytes, max_reconnect_backoff_ms) -> handle
PyObject* PyRelay_channel(PyRelay* self, PyObject* args) {
  const char* target;
  const char *ca, *cert, *key, *server_name;
  Py_ssize_t ca_size = 0, cert_size = 0, key_size = 0;
  int tls, max_message_bytes, reconnect_max_ms;
  if (!PyArg_ParseTuple(args, "sz#z#z#zpii", &target, &ca, &ca_size, &cert, &cert_size, &key, &key_size,
                        &server_name, &tls, &max_message_bytes, &reconnect_max_ms))
    return nullptr;
  grpc::ChannelArguments arguments;
  arguments.SetMaxReceiveMessageSize(max_message_bytes);
  arguments.SetMaxSendMessageSize(max_message_bytes);
  // The same keepalive and reconnect policy as the Python channels (router_svc.upstream.channel_options).
  arguments.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 60000);
  arguments.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 20000);
  arguments.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 0);
  arguments.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  arguments.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  arguments.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, reconnect_max_ms);
  // The router retries before the first frame itself (Python's failover decision). gRPC's own
  // retry filter would sit on every call anyway (client_channel.cc puts it at the end of each
  // call's dynamic filter stack unless this is 0) and copy every batch of a streaming call until
  // the call commits.
  arguments.SetInt(GRPC_ARG_ENABLE_RETRIES, 0);
  arguments.SetInt(GRPC_ARG_ENABLE_PER_MESSAGE_COMPRESSION, 0);  // as on the server (Relay::Start)
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  if (tls) {
    grpc::SslCredentialsOptions options;
    if (ca != nullptr) options.pem_root_certs.assign(ca, ca_size);
    if (cert != nullptr) options.pem_cert_chain.assign(cert, cert_size);
    if (key != nullptr) options.pem_private_key.assign(key, key_size);
    credentials = grpc::SslCredentials(options);
    if (server_name != nullptr) arguments.SetSslTargetNameOverride(server_name);
  } else {
    credentials = grpc::InsecureChannelCredentials();
  }
  std::shared_ptr<grpc::Channel> channel = grpc::CreateCustomChannel(target, credentials, arguments);
  long long handle = self->next_channel++;
  (*self->channels)[handle] = std::move(channel);
  return PyLong_FromLongLong(handle);
}

PyObject* PyRelay_drop_channel(PyRelay* self, PyObject* args) {
  long long handle;
  if (!PyArg_ParseTuple(args, "L", &handle)) return nullptr;
  self->channels->erase(handle);  // streams on it keep it alive until they end
  Py_RETURN_NONE;
}

// proceed(call_id, channel, metadata, initial_metadata, capture) -> bool
PyObject* PyRelay_proceed(PyRelay* self, PyObject* args) {
  unsigned long long id;
  long long handle;
  PyObject *metadata, *initial;
  int capture;
  if (!PyArg_ParseTuple(args, "KLOOp", &id, &handle, &metadata, &initial, &capture)) return nullptr;
  auto it = self->channels->find(handle);
  if (it == self->channels->end()) {
    PyErr_Format(PyExc_KeyError, "no channel %lld", handle);
    return nullptr;
  }
  Decision decision;
  decision.proceed = true;
  decision.channel = it->second;
  decision.capture = capture != 0;
  if (!MetadataFromPython(metadata, &decision.metadata) || !MetadataFromPython(initial, &decision.initial))
    return nullptr;
  return PyBool_FromLong(self->relay->Answer(id, std::move(decision)));
}

// finish(call_id, code, details, trailing_metadata) -> bool
PyObject* PyRelay_finish(PyRelay* self, PyObject* args) {
  unsigned long long id;
  int code;
  const char* details;
  Py_ssize_t details_size;
  PyObject* trailers;
  if (!PyArg_ParseTuple(args, "Kis#O", &id, &code, &details, &details_size, &trailers)) return nullptr;
  if (code <= 0 || code > 16) {
    PyErr_Format(PyExc_ValueError, "finish needs an error status code (1-16), got %d", code);
    return nullptr;
  }
  Decision decision;
  decision.code = code;
  decision.details.assign(details, details_size);
  if (!MetadataFromPython(trailers, &decision.trailers)) return nullptr;
  return PyBool_FromLong(self->relay->Answer(id, std::move(decision)));
}

PyObject* PyRelay_shutdown(PyRelay* self, PyObject* args) {
  double grace;
  if (!PyArg_ParseTuple(args, "d", &grace)) return nullptr;
  Py_BEGIN_ALLOW_THREADS
  self->relay->Shutdown(grace);
  Py_END_ALLOW_THREADS
  Py_RETURN_NONE;
}

PyObject* PyRelay_waiting(PyRelay* self, PyObject*) { return PyLong_FromSize_t(self->relay->waiting()); }

PyObject* PyRelay_held_bytes(PyRelay* self, PyObject*) { return PyLong_FromLongLong(self->relay->held_bytes()); }

PyObject* PyRelay_live_calls(PyRelay* self, PyObject*) { return PyLong_FromLongLong(self->relay->live_calls()); }

PyMethodDef kRelayMethods[] = {
    {"start", reinterpret_cast<PyCFunction>(PyRelay_start), METH_VARARGS,
     "start(listen, threads, forward_target, tls, max_message_bytes, reuse_port, itl_bounds) -> port"},
    {"fileno", reinterpret_cast<PyCFunction>(PyRelay_fileno), METH_NOARGS,
     "The eventfd that becomes readable when events wait in drain()."},
    {"drain", reinterpret_cast<PyCFunction>(PyRelay_drain), METH_NOARGS, "The events posted since the last call."},
    {"channel", reinterpret_cast<PyCFunction>(PyRelay_channel), METH_VARARGS,
     "channel(target, ca, cert, key, server_name, tls, max_message_bytes, reconnect_max_ms) -> handle"},
    {"drop_channel", reinterpret_cast<PyCFunction>(PyRelay_drop_channel), METH_VARARGS,
     "Forgets a channel handle; streams using the channel keep it until they end."},
    {"proceed", reinterpret_cast<PyCFunction>(PyRelay_proceed), METH_VARARGS,
     "proceed(call_id, channel, metadata, initial_metadata, capture) -> False if the call is gone"},
    {"finish", reinterpret_cast<PyCFunction>(PyRelay_finish), METH_VARARGS,
     "finish(call_id, code, details, trailing_metadata) -> False if the call is gone"},
    {"shutdown", reinterpret_cast<PyCFunction>(PyRelay_shutdown), METH_VARARGS,
     "shutdown(grace_s): stop accepting, let calls end within grace_s, cancel the rest"},
    {"waiting", reinterpret_cast<PyCFunction>(PyRelay_waiting), METH_NOARGS,
     "How many calls wait for an answer from Python."},
    {"held_bytes", reinterpret_cast<PyCFunction>(PyRelay_held_bytes), METH_NOARGS,
     "Response bytes the relay holds now (read from upstreams, not yet written to clients)."},
    {"live_calls", reinterpret_cast<PyCFunction>(PyRelay_live_calls), METH_NOARGS,
     "Calls the relay holds now (requested, in flight or ending); 0 once shutdown() returned."},
    {nullptr, nullptr, 0, nullptr}};

PyTypeObject PyRelayType = {PyVarObject_HEAD_INIT(nullptr, 0)};

PyObject* Version(PyObject*, PyObject*) { return PyUnicode_FromString(grpc::Version().c_str()); }

PyMethodDef kModuleMethods[] = {
    {"grpc_version", Version, METH_NOARGS, "The version of gRPC's C++ library this module runs on."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef kModule = {PyModuleDef_HEAD_INIT, "router_svc._relay",
                       "The native Generate relay on gRPC's C++ library (see router_svc.native_relay).", -1,
                       kModuleMethods};

}  // namespace

PyMODINIT_FUNC PyInit__relay(void) {
  // Debian's Abseil runs with the Mutex deadlock detector on (its default in builds without NDEBUG):
  // a cycle-graph update on every lock gRPC's core takes (GraphCycles in perf profiles of the relay).
  // grpcio carries its own Abseil, untouched by this.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  PyRelayType.tp_name = "router_svc._relay.Relay";
  PyRelayType.tp_basicsize = sizeof(PyRelay);
  PyRelayType.tp_flags = Py_TPFLAGS_DEFAULT;
  PyRelayType.tp_doc = "A native gRPC server relaying Router.Generate; decisions come from Python.";
  PyRelayType.tp_new = PyType_GenericNew;
  PyRelayType.tp_init = reinterpret_cast<initproc>(PyRelay_init);
  PyRelayType.tp_dealloc = reinterpret_cast<destructor>(PyRelay_dealloc);
  PyRelayType.tp_methods = kRelayMethods;
  if (PyType_Ready(&PyRelayType) < 0) return nullptr;
  PyObject* module = PyModule_Create(&kModule);
  if (module == nullptr) return nullptr;
  Py_INCREF(&PyRelayType);
  if (PyModule_AddObject(module, "Relay", reinterpret_cast<PyObject*>(&PyRelayType)) < 0) {
    Py_DECREF(&PyRelayType);
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
