/* A descriptor whose size field is smaller than the ABI requires (it claims
 * to end before the lifecycle callbacks): refused with both sizes. */
#include "config.h"

#include <stddef.h>

#include "hadron/module.h"

static const hd_module_desc_t desc = {
    .abi_major = HD_MODULE_ABI_MAJOR,
    .abi_minor = HD_MODULE_ABI_MINOR,
    .size = offsetof(hd_module_desc_t, check_config),
    .build_signature = HD_BUILD_SIGNATURE,
    .name = "small_desc",
    .version = "1",
    .description = "test module with a short descriptor size",
};

HD_MODULE_EXPORT(desc)
