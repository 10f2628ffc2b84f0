/* POST /api/media on the admin listener (dispatcher/media_api.c). */
#ifndef DISPATCHER_MEDIA_API_H
#define DISPATCHER_MEDIA_API_H

#include "wc_media.h"

typedef struct dispatcher dispatcher;

/* Routes /api/media on ds->d.admin_http (nothing when that listener is off)
 * with the image settings in cfg (kept by pointer). */
void media_api_init(dispatcher *ds, const wc_media_cfg *cfg);
/* Waits for uploads being prepared; their requests get no answer. */
void media_api_free(void);

#endif
