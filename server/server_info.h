// GetServerInfo's answer, built once at start from the options, the backend and the parameter
// defaults of focal/params.h (their one home).
#pragma once

#include <string>
#include <vector>

#include "focal/v1/focal_loss.pb.h"
#include "server/options.h"

namespace focal::server {

v1::ServerInfo BuildServerInfo(const ServerOptions& options, const std::string& backend,
                               const std::vector<std::string>& devices);

}  // namespace focal::server
