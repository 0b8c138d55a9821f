// `qlora-train cfg.yaml --nproc N`: start N local ranks of the same command (torchrun-style environment).
//
// Each child is this executable again with the launcher's own arguments minus --nproc, and RANK, LOCAL_RANK,
// WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR (127.0.0.1 unless set) and MASTER_PORT (a free port unless set).
// Children run in their own process group, so a Ctrl-C reaches them once, forwarded by the launcher (SIGINT
// and SIGTERM are forwarded; the ranks agree on the step to stop at, checkpoint and exit 130).
// When a rank fails (non-zero exit other than 130, or killed by a signal) the launcher logs which, gives the
// others kFailureGrace to exit by themselves (they name the rank too), kills the rest, and returns non-zero.
#pragma once

#include <string>
#include <vector>

namespace qlora::dist {

// argv: the launcher's full command line; the --nproc option (and its value) is removed for the children.
// Returns the exit code for the launcher: 0 all ranks done, 130 all stopped by a signal, else the first failed
// rank's code (1 when it died by a signal). Throws qlora::Error for nproc < 1 or when already inside a launch.
int launch_local_ranks(int nproc, const std::vector<std::string>& argv);

}  // namespace qlora::dist
