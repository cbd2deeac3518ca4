// Eigenvalues (no eigenvectors) of a dense real symmetric matrix, on the calling thread only.
//
// Why htcore has its own: OpenBLAS's LAPACK eigensolvers run one call at a time per process, so
// the per-layer eigenvalue problems of `htcore.analyze` could not use two cores. This solver is
// plain C++ with no shared state: two threads run two calls side by side.
#pragma once
#include <cstdint>

namespace htcore {

// Eigenvalues of the symmetric n x n float64 matrix `a` (row-major, row stride n), ascending, into
// out[0..n). Only the lower triangle (a[i*n + j], j <= i) is read, as numpy.linalg.eigvalsh reads
// it by default. Method: Householder reduction to tridiagonal form (LAPACK dsytd2, fused with the
// next step's matrix-vector product), then root-free implicit QL/QR (Pal-Walker-Kahan, LAPACK
// dsterf). The matrix is first scaled by a power of two (exact) so max|a_ij| is near 1.
// Absolute error of each eigenvalue: a small multiple of n * 2^-53 * ||A||_2, as LAPACK's.
// Deterministic: the same input gives the same bits on a given CPU (AVX2+FMA and portable code
// paths round differently; the choice is made once per process).
// Throws std::invalid_argument for n < 0 or a non-finite entry in the lower triangle, and
// std::domain_error when the QL/QR iteration needs more than max_sweeps * n sweeps in total
// (LAPACK allows 30 * n; it converges in about 2 per eigenvalue).
void symmetric_eigenvalues(const double* a, std::int64_t n, double* out, int max_sweeps = 30);

// Whether symmetric_eigenvalues uses its AVX2+FMA code path (the CPU has it and it is enabled).
bool symmetric_eigenvalues_uses_avx2();
// For tests: disable (or re-enable) the AVX2+FMA path, so the portable one runs on any CPU.
void symmetric_eigenvalues_enable_avx2(bool enabled);

}  // namespace htcore
