/* The few declarations of LiteRT's C API (google-ai-edge/LiteRT, litert/c/) that esengine.c uses,
 * written for this project from the public headers of LiteRT 2.2/2.3 (pinned: the runtime that
 * is loaded must be the same API version; LiteRtCreateModelFromFile takes the environment since
 * 2.2). Only opaque handles, enums passed as int and two ABI-stable structs are needed.
 * The functions are looked up with dlsym at run time, so nothing here is linked. */
#ifndef EDGE_SHITU_LITERT_DECLS_H
#define EDGE_SHITU_LITERT_DECLS_H

#include <stddef.h>
#include <stdint.h>

typedef int LiteRtStatus; /* kLiteRtStatusOk == 0 */
typedef size_t LiteRtParamIndex;
typedef int LiteRtHwAcceleratorSet;
typedef struct LiteRtEnvironmentT *LiteRtEnvironment;
typedef struct LiteRtModelT *LiteRtModel;
typedef struct LiteRtSignatureT *LiteRtSignature;
typedef struct LiteRtTensorT *LiteRtTensor;
typedef struct LiteRtOptionsT *LiteRtOptions;
typedef struct LiteRtOpaqueOptionsT *LiteRtOpaqueOptions;
typedef struct LiteRtCompiledModelT *LiteRtCompiledModel;
typedef struct LiteRtTensorBufferT *LiteRtTensorBuffer;
typedef struct LiteRtTensorBufferRequirementsT *LiteRtTensorBufferRequirements;

#define ES_LITERT_HW_CPU 1         /* kLiteRtHwAcceleratorCpu */
#define ES_LITERT_LOCK_READ 0      /* kLiteRtTensorBufferLockModeRead */
#define ES_LITERT_LOCK_WRITE 1     /* kLiteRtTensorBufferLockModeWrite */
#define ES_LITERT_FLOAT32 1        /* kLiteRtElementTypeFloat32 */
#define ES_LITERT_MAX_RANK 8       /* LITERT_TENSOR_MAX_RANK */

/* LiteRtLayout / LiteRtRankedTensorType: "part of the public API and ABI stable" (72 bytes). */
typedef struct {
    unsigned int rank : 7;
    unsigned int has_strides : 1;
    int32_t dimensions[ES_LITERT_MAX_RANK];
    uint32_t strides[ES_LITERT_MAX_RANK];
} es_litert_layout;

typedef struct {
    int element_type; /* LiteRtElementType */
    es_litert_layout layout;
} es_litert_ranked_type;

_Static_assert(sizeof(es_litert_ranked_type) == 72, "LiteRtRankedTensorType is 72 bytes");

typedef LiteRtStatus (*fn_create_environment)(int, const void *, LiteRtEnvironment *);
typedef void (*fn_destroy_environment)(LiteRtEnvironment);
typedef LiteRtStatus (*fn_create_model_from_file)(LiteRtEnvironment, const char *, LiteRtModel *);
typedef void (*fn_destroy_model)(LiteRtModel);
typedef LiteRtStatus (*fn_get_model_signature)(LiteRtModel, LiteRtParamIndex, LiteRtSignature *);
typedef LiteRtStatus (*fn_get_num_signature_io)(LiteRtSignature, LiteRtParamIndex *);
typedef LiteRtStatus (*fn_get_signature_tensor)(LiteRtSignature, LiteRtParamIndex, LiteRtTensor *);
typedef LiteRtStatus (*fn_get_signature_name)(LiteRtSignature, LiteRtParamIndex, const char **);
typedef LiteRtStatus (*fn_get_ranked_tensor_type)(LiteRtTensor, es_litert_ranked_type *);
typedef LiteRtStatus (*fn_create_options)(LiteRtOptions *);
typedef void (*fn_destroy_options)(LiteRtOptions);
typedef LiteRtStatus (*fn_set_options_hw)(LiteRtOptions, LiteRtHwAcceleratorSet);
typedef LiteRtStatus (*fn_create_opaque_options)(const char *, void *, void (*)(void *), LiteRtOpaqueOptions *);
typedef LiteRtStatus (*fn_add_opaque_options)(LiteRtOptions, LiteRtOpaqueOptions);
typedef LiteRtStatus (*fn_create_compiled_model)(LiteRtEnvironment, LiteRtModel, LiteRtOptions,
                                                 LiteRtCompiledModel *);
typedef void (*fn_destroy_compiled_model)(LiteRtCompiledModel);
typedef LiteRtStatus (*fn_get_buffer_requirements)(LiteRtCompiledModel, LiteRtParamIndex, LiteRtParamIndex,
                                                   LiteRtTensorBufferRequirements *);
typedef LiteRtStatus (*fn_create_managed_buffer_from_requirements)(LiteRtEnvironment, const es_litert_ranked_type *,
                                                                   LiteRtTensorBufferRequirements,
                                                                   LiteRtTensorBuffer *);
typedef LiteRtStatus (*fn_lock_buffer)(LiteRtTensorBuffer, void **, int);
typedef LiteRtStatus (*fn_unlock_buffer)(LiteRtTensorBuffer);
typedef void (*fn_destroy_buffer)(LiteRtTensorBuffer);
typedef LiteRtStatus (*fn_run_compiled_model)(LiteRtCompiledModel, LiteRtParamIndex, size_t, LiteRtTensorBuffer *,
                                              size_t, LiteRtTensorBuffer *);

#endif
