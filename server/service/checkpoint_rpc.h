// The QuantizeCheckpoint RPC: validates the request, confines its paths (PathPolicy), admits a
// checkpoint job, runs server/checkpoint's RunCheckpointJob on a scheduler worker's engine and
// streams progress, per-tensor results and the final report back. Cancelling the call or the
// job stops it between work chunks; the staging directory is kept for a resume.
// Thread-safety: the reactor is internally synchronised; see checkpoint_rpc.cc.
#ifndef NVFP4_SERVER_SERVICE_CHECKPOINT_RPC_H_
#define NVFP4_SERVER_SERVICE_CHECKPOINT_RPC_H_

#include "absl/status/statusor.h"
#include "grpcpp/grpcpp.h"
#include "nvfp4/v1/quantizer.grpc.pb.h"
#include "server/checkpoint/checkpoint_job.h"

namespace nvfp4::server {

class QuantizerService;

// The reactor deletes itself when the RPC is done.
grpc::ServerWriteReactor<v1::QuantizeCheckpointResponse>* StartCheckpointRpc(
    QuantizerService* service, grpc::CallbackServerContext* context,
    const v1::QuantizeCheckpointRequest* request);

}  // namespace nvfp4::server

#endif  // NVFP4_SERVER_SERVICE_CHECKPOINT_RPC_H_
