/* A shared object with a valid descriptor exported under another name: the
 * loader must report the missing hd_module_descriptor symbol. */
#include "config.h"

#include "hadron/module.h"

static const hd_module_desc_t desc = {
    .abi_major = HD_MODULE_ABI_MAJOR,
    .abi_minor = HD_MODULE_ABI_MINOR,
    .size = sizeof(hd_module_desc_t),
    .build_signature = HD_BUILD_SIGNATURE,
    .name = "no_symbol",
    .version = "1",
    .description = "test module without the descriptor symbol",
};

const hd_module_desc_t *hd_module_descriptor_v0(void);
__attribute__((visibility("default"))) const hd_module_desc_t *hd_module_descriptor_v0(void) {
  return &desc;
}
