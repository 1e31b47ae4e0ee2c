/* wrong_name.so holds a module called "someone_else": the loader must refuse
 * it under the section name [module wrong_name] and name both. */
#include "config.h"

#include "hadron/module.h"

static const hd_module_desc_t desc = {
    .abi_major = HD_MODULE_ABI_MAJOR,
    .abi_minor = HD_MODULE_ABI_MINOR,
    .size = sizeof(hd_module_desc_t),
    .build_signature = HD_BUILD_SIGNATURE,
    .name = "someone_else",
    .version = "1",
    .description = "test module whose name differs from its file",
};

HD_MODULE_EXPORT(desc)
