/* Classify one input with a compressed model, from C: classify MODEL.safetensors INPUT.f32
 * (INPUT.f32: the raw float32 values of one sample, of the model's input shape). Prints the label. */
#include <htcore/htcore.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char** argv) {
  htcore_model* model = NULL;
  int64_t in_dims[HTCORE_MAX_DIMS], out_dims[HTCORE_MAX_DIMS], in_size = 1, out_size = 1;
  int in_ndim = 0, out_ndim = 0, best = 0;
  if (argc != 3) return fprintf(stderr, "usage: classify MODEL.safetensors INPUT.f32\n"), 2;
  if (htcore_model_load(argv[1], &model) != HTCORE_OK || htcore_model_input_shape(model, in_dims, &in_ndim) != HTCORE_OK ||
      htcore_model_output_shape(model, NULL, 0, out_dims, &out_ndim) != HTCORE_OK) {
    fprintf(stderr, "classify: %s\n", htcore_last_error());
    return htcore_model_free(model), 1;
  }
  for (int i = 0; i < in_ndim; ++i) in_size *= in_dims[i];
  for (int i = 0; i < out_ndim; ++i) out_size *= out_dims[i];
  float* x = malloc(in_size * sizeof(float));
  float* y = malloc(out_size * sizeof(float));
  FILE* f = fopen(argv[2], "rb");
  size_t got = f ? fread(x, sizeof(float), in_size, f) : 0;
  if (f) fclose(f);
  int status = got == (size_t)in_size ? htcore_model_run(model, x, 1, NULL, 0, y, out_size) : -1;
  if (status == HTCORE_OK) {
    for (int64_t i = 1; i < out_size; ++i) best = y[i] > y[best] ? (int)i : best;
    printf("%d\n", best);
  } else {
    fprintf(stderr, "classify: %s\n", status < 0 ? "cannot read the input" : htcore_last_error());
  }
  free(x), free(y), htcore_model_free(model);
  return status == HTCORE_OK ? 0 : 1;
}
