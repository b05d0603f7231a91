/* embed_fatbin.c — puts the nvcc-built fatbin of kernels.cu (sm_80/86/89/90 + PTX) into the engine's read-only data
 * as llmt_cuda_fatbin, for cuModuleLoadData (backend_cuda.cpp). LLMT_FATBIN_PATH is set by CMake. GCC/Clang only
 * (.incbin); fatbins are 8-byte aligned as the driver expects. */
#define LLMT_STR2(x) #x
#define LLMT_STR(x) LLMT_STR2(x)
__asm__(".section .rodata\n"
        ".balign 16\n"
        ".global llmt_cuda_fatbin\n"
        "llmt_cuda_fatbin:\n"
        ".incbin \"" LLMT_STR(LLMT_FATBIN_PATH) "\"\n"
        ".byte 0\n"
        ".previous\n");
