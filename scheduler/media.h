/* A campaign's image, prepared once when the campaign is triggered
 * (scheduler/media.c): the calls scheduler.c makes (settings: wc_media.h). */
#ifndef SCHEDULER_MEDIA_H
#define SCHEDULER_MEDIA_H

#include <stdbool.h>
#include <stddef.h>

#include "wc_media.h"

struct evbuffer;
typedef struct scheduler scheduler;

/* At start-up (exits on a bad allow-list) and at the end. */
void media_init(scheduler *s);
void media_free(scheduler *s);
/* Called once a claimed campaign passed validation: prepares its image (or
 * finds it prepared) and then calls scheduler_expand(), or fails the
 * campaign with a reason naming what was wrong, or abandons the claim when
 * PostgreSQL is away. A campaign without media_url goes straight on. */
void media_prepare(scheduler *s);
void media_metrics(struct evbuffer *out, scheduler *s);

#endif
