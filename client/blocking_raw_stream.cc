#include "client/blocking_raw_stream.h"

namespace nvfp4::client {
namespace {
// One operation is outstanding at a time, so a single tag identifies it.
void* const kTag = reinterpret_cast<void*>(1);
}  // namespace

BlockingRawStream::BlockingRawStream(const std::shared_ptr<grpc::Channel>& channel,
                                     grpc::ClientContext* context, const std::string& method)
    : stub_(channel) {
  call_ = stub_.PrepareCall(context, method, &cq_);
  if (call_) {
    call_->StartCall(kTag);
    started_ = Wait();
  }
}

BlockingRawStream::~BlockingRawStream() {
  cq_.Shutdown();
  void* tag;
  bool ok;
  while (cq_.Next(&tag, &ok)) {
  }
}

bool BlockingRawStream::Wait() {
  void* tag = nullptr;
  bool ok = false;
  return cq_.Next(&tag, &ok) && ok;
}

bool BlockingRawStream::Write(const grpc::ByteBuffer& message) {
  if (!started_) return false;
  call_->Write(message, kTag);
  return Wait();
}

bool BlockingRawStream::WritesDone() {
  if (!started_) return false;
  call_->WritesDone(kTag);
  return Wait();
}

bool BlockingRawStream::Read(grpc::ByteBuffer* message) {
  if (!started_) return false;
  call_->Read(message, kTag);
  return Wait();
}

grpc::Status BlockingRawStream::Finish() {
  if (!call_) return grpc::Status(grpc::StatusCode::INTERNAL, "the call could not be created");
  grpc::Status status;
  call_->Finish(&status, kTag);
  Wait();
  return status;
}

}  // namespace nvfp4::client
