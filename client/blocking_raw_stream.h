// BlockingRawStream: a bidi-streaming call with serialised (grpc::ByteBuffer) messages behind
// a blocking Write / Read / WritesDone / Finish interface, like the generated sync stub's.
//
// The generated stub only takes protobuf messages, so every upload chunk would be copied into
// a message and again into its serialisation; with raw messages the client sends chunk slices
// as they are (proto/chunk_wire.h). Implemented with the public generic stub on a private
// completion queue, one operation at a time. Finish must be called once the stream was
// started; the ClientContext must outlive the stream. Not thread-safe, except that the
// context may be cancelled (TryCancel) from any thread.
#ifndef NVFP4_CLIENT_BLOCKING_RAW_STREAM_H_
#define NVFP4_CLIENT_BLOCKING_RAW_STREAM_H_

#include <memory>
#include <string>

#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"

namespace nvfp4::client {

class BlockingRawStream {
 public:
  // method: the full name, "/package.Service/Method".
  BlockingRawStream(const std::shared_ptr<grpc::Channel>& channel, grpc::ClientContext* context,
                    const std::string& method);
  ~BlockingRawStream();
  BlockingRawStream(const BlockingRawStream&) = delete;
  BlockingRawStream& operator=(const BlockingRawStream&) = delete;

  // Each returns false once the call is over (then Finish says why).
  bool Write(const grpc::ByteBuffer& message);
  bool WritesDone();
  bool Read(grpc::ByteBuffer* message);
  grpc::Status Finish();

 private:
  bool Wait();

  grpc::CompletionQueue cq_;
  grpc::GenericStub stub_;
  std::unique_ptr<grpc::GenericClientAsyncReaderWriter> call_;
  bool started_ = false;
};

}  // namespace nvfp4::client

#endif  // NVFP4_CLIENT_BLOCKING_RAW_STREAM_H_
