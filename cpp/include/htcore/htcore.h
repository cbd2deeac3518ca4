/* htcore's C API: load a compressed model file (written by htcore.runtime.save_compressed or
 * `htcore compress`) and run it on float32 inputs, without Python.
 *
 * Conventions:
 * - Every function returning int returns HTCORE_OK (0) or an error code; on error,
 *   htcore_last_error() gives a one-line message for the calling thread. No function aborts or
 *   lets a C++ exception out.
 * - Shapes are per sample, without the batch dimension (e.g. {1, 28, 28} or {784}); inputs and
 *   outputs are C-contiguous float32 arrays of batch samples.
 * - A loaded model is immutable: any number of threads may call htcore_model_run on it at once.
 * - The thread count (htcore_set_num_threads) is process-wide; results are bitwise identical at
 *   any thread count.
 *
 * C99; link with htcore::runtime (CMake: find_package(htcore) then
 * target_link_libraries(app PRIVATE htcore::runtime)).
 */
#ifndef HTCORE_HTCORE_H
#define HTCORE_HTCORE_H

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#define HTCORE_API __declspec(dllexport)
#else
#define HTCORE_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Return codes. */
enum {
  HTCORE_OK = 0,
  HTCORE_ERROR_INVALID_ARGUMENT = 1, /* a null pointer, a wrong shape or size, NaN/Inf in the input */
  HTCORE_ERROR_INVALID_MODEL = 2,    /* the model file is malformed or inconsistent (nothing was run) */
  HTCORE_ERROR_IO = 3,               /* the file cannot be opened or mapped */
  HTCORE_ERROR_OUT_OF_MEMORY = 4,
  HTCORE_ERROR_INTERNAL = 5
};

/* Most dimensions a per-sample shape has (per-sample shapes are at most 3-D in practice). */
#define HTCORE_MAX_DIMS 8

typedef struct htcore_model htcore_model;

/* Loads and fully validates the model file at path (memory-mapped; weights are read in place). */
HTCORE_API int htcore_model_load(const char* path, htcore_model** model);

/* As htcore_model_load, from size bytes at data (e.g. a flash image). The caller owns data and
 * must keep it unchanged until htcore_model_free: weights are used in place wherever their
 * alignment allows (float64 values, which run as float32, and misaligned arrays are copied). */
HTCORE_API int htcore_model_load_buffer(const void* data, size_t size, htcore_model** model);

/* Frees a model (null is allowed). */
HTCORE_API void htcore_model_free(htcore_model* model);

/* The per-sample input shape the model declares (its input_shape, or the in_features of a first
 * Linear): dims receives *ndim <= HTCORE_MAX_DIMS values. HTCORE_ERROR_INVALID_ARGUMENT when the
 * file does not say (an image model saved without input_shape): pass the shape to the functions
 * below instead. */
HTCORE_API int htcore_model_input_shape(const htcore_model* model, int64_t* dims, int* ndim);

/* The per-sample output shape for per-sample input shape input_dims[0..input_ndim) (input_dims
 * null: the model's input shape). */
HTCORE_API int htcore_model_output_shape(const htcore_model* model, const int64_t* input_dims, int input_ndim,
                                         int64_t* dims, int* ndim);

/* output (output_size floats: batch times the per-sample output size) = the model applied to
 * batch samples at input, each of shape input_dims[0..input_ndim) (input_dims null: the model's
 * input shape). Nothing is computed unless the shapes, sizes and finiteness of input check out. */
HTCORE_API int htcore_model_run(const htcore_model* model, const float* input, int64_t batch, const int64_t* input_dims,
                                int input_ndim, float* output, int64_t output_size);

/* Threads the kernels use (process-wide; n >= 1). Default: OMP_NUM_THREADS, else the cores. */
HTCORE_API int htcore_set_num_threads(int n);
HTCORE_API int htcore_get_num_threads(void);

/* The message of the last failed call on this thread ("" if none); valid until its next call. */
HTCORE_API const char* htcore_last_error(void);

/* The library version, e.g. "0.1.0". */
HTCORE_API const char* htcore_version(void);

#ifdef __cplusplus
}
#endif

#endif /* HTCORE_HTCORE_H */
