// MPI_CHECK(expr): throws rf::Error carrying the expression, file:line and MPI's own error string
// (the project's one-macro-per-library convention, built from RF_LIB_CHECK_GEN).
#pragma once
#if RINGFLOW_MPI
#include <mpi.h>

#include <string>

#include "runtime/error.h"

namespace rf::collective {
// MPI's message for an error code (MPI_Error_string).
std::string mpi_error_string(int code);
}  // namespace rf::collective

#define MPI_CHECK(expr) RF_LIB_CHECK_GEN("MPI", expr, MPI_SUCCESS, ::rf::collective::mpi_error_string)
#endif
