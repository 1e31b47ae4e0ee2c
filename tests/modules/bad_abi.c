/* A module built for the next ABI major: the loader must refuse it and say
 * which ABI each side has.  Everything else about it is valid. */
#include "config.h"

#include "hadron/module.h"

static const hd_module_desc_t desc = {
    .abi_major = HD_MODULE_ABI_MAJOR + 1,
    .abi_minor = HD_MODULE_ABI_MINOR,
    .size = sizeof(hd_module_desc_t),
    .build_signature = HD_BUILD_SIGNATURE,
    .name = "bad_abi",
    .version = "1",
    .description = "test module with the wrong ABI major",
};

HD_MODULE_EXPORT(desc)
