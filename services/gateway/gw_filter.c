/*  gw_filter: events as the gateway pushes them, and the filters of a
    subscription (protocol.md, "Subscribing and resuming").               */

#include "gw_internal.h"

#include <string.h>

static char *
s_dup (cJSON *obj, const char *key)
{
    cJSON *item = cJSON_GetObjectItemCaseSensitive (obj, key);
    return cJSON_IsString (item) && item->valuestring[0] ? strdup (item->valuestring) : NULL;
}

gw_event_t *
gw_event_new (cJSON *event, const char *project_id)
{
    cJSON *seq = cJSON_GetObjectItemCaseSensitive (event, "seq");
    cJSON *topic = cJSON_GetObjectItemCaseSensitive (event, "topic");
    if (!cJSON_IsNumber (seq) || !cJSON_IsString (topic))
        return NULL;
    gw_event_t *self = calloc (1, sizeof *self);
    if (!self)
        return NULL;
    self->seq = (int64_t) seq->valuedouble;
    self->topic = strdup (topic->valuestring);
    self->task_id = s_dup (event, "task_id");
    self->entity = s_dup (event, "entity");
    self->entity_id = s_dup (event, "entity_id");
    if (project_id && *project_id)
        self->project_id = strdup (project_id);
    //  The hook types of a hook.added, tab-delimited, for hook_types filters.
    cJSON *types = cJSON_GetObjectItemCaseSensitive (cJSON_GetObjectItem (event, "data"), "types");
    if (strcmp (self->topic, "hook.added") == 0 && cJSON_IsObject (types)) {
        size_t size = 2;
        cJSON *type;
        cJSON_ArrayForEach (type, types) size += strlen (type->string) + 1;
        self->hook_types = malloc (size);
        if (self->hook_types) {
            char *w = self->hook_types;
            *w++ = '\t';
            cJSON_ArrayForEach (type, types)
            {
                w = stpcpy (w, type->string);
                *w++ = '\t';
            }
            *w = 0;
        }
    }
    //  The push: the store's event with "type" first, v dropped, project_id added.
    cJSON *push = cJSON_CreateObject ();
    cJSON_AddStringToObject (push, "type", "event");
    cJSON *item = event->child;
    while (item) {
        cJSON *next = item->next;
        if (strcmp (item->string, "v") != 0 && strcmp (item->string, "project_id") != 0)
            cJSON_AddItemReferenceToObject (push, item->string, item);
        item = next;
    }
    if (self->project_id)
        cJSON_AddStringToObject (push, "project_id", self->project_id);
    else
        cJSON_AddNullToObject (push, "project_id");
    char *text = cJSON_PrintUnformatted (push);
    cJSON_Delete (push);  //  references only: event keeps its items
    if (!text || !self->topic) {
        free (text);
        gw_event_destroy (&self);
        return NULL;
    }
    self->len = strlen (text);
    self->buf = malloc (LWS_PRE + self->len + 1);
    if (self->buf)
        memcpy (self->buf + LWS_PRE, text, self->len + 1);
    free (text);
    if (!self->buf)
        gw_event_destroy (&self);
    return self;
}

void
gw_event_destroy (gw_event_t **self_p)
{
    if (self_p && *self_p) {
        gw_event_t *self = *self_p;
        free (self->topic);
        free (self->task_id);
        free (self->project_id);
        free (self->entity);
        free (self->entity_id);
        free (self->hook_types);
        free (self->buf);
        free (self);
        *self_p = NULL;
    }
}

//  Reads an array of 1-64 strings of 1-64 bytes into *out / *count.
static int
s_strings (cJSON *filters, const char *field, char ***out, int *count, ccm_error_t *err)
{
    cJSON *array = NULL;
    if (ccm_get_array (filters, field, false, 1, 64, &array, err))
        return -1;
    if (!array)
        return 0;
    int n = cJSON_GetArraySize (array);
    *out = calloc ((size_t) n, sizeof (char *));
    if (!*out)
        return ccm_fail (err, "internal", field, "out of memory");
    for (int i = 0; i < n; i++) {
        cJSON *item = cJSON_GetArrayItem (array, i);
        size_t len = cJSON_IsString (item) ? strlen (item->valuestring) : 0;
        if (len < 1 || len > 64)
            return ccm_fail (err, "bad_field", field, "%s[%d]: must be a string of 1-64 bytes",
                             field, i);
        (*out)[i] = strdup (item->valuestring);
        (*count)++;
    }
    return 0;
}

int
gw_filter_parse (cJSON *filters, gw_filter_t **out, ccm_error_t *err)
{
    *out = calloc (1, sizeof (gw_filter_t));
    if (!*out)
        return ccm_fail (err, "internal", "filters", "out of memory");
    if (!filters || cJSON_IsNull (filters))
        return 0;
    if (!cJSON_IsObject (filters))
        return ccm_fail (err, "bad_field", "filters", "filters: must be an object");
    static const char *const known[] = {"project", "task", "agent", "types", "hook_types", NULL};
    cJSON *item;
    cJSON_ArrayForEach (item, filters)
    {
        int i = 0;
        while (known[i] && strcmp (known[i], item->string))
            i++;
        if (!known[i])
            return ccm_fail (err, "bad_field", item->string,
                             "filters: unknown filter '%.64s' (project, task, agent, types, "
                             "hook_types)",
                             item->string);
    }
    gw_filter_t *self = *out;
    const char *project = NULL, *task = NULL, *agent = NULL;
    if (ccm_get_string (filters, "project", false, 64, &project, err)
        || ccm_get_string (filters, "task", false, 64, &task, err)
        || ccm_get_string (filters, "agent", false, 64, &agent, err)
        || s_strings (filters, "types", &self->types, &self->ntypes, err)
        || s_strings (filters, "hook_types", &self->hook_types, &self->nhook_types, err))
        return -1;
    self->project_id = project ? strdup (project) : NULL;
    self->task_id = task ? strdup (task) : NULL;
    self->agent_id = agent ? strdup (agent) : NULL;
    return 0;
}

void
gw_filter_destroy (gw_filter_t **self_p)
{
    if (self_p && *self_p) {
        gw_filter_t *self = *self_p;
        free (self->project_id);
        free (self->task_id);
        free (self->agent_id);
        free (self->agent_task_id);
        for (int i = 0; i < self->ntypes; i++)
            free (self->types[i]);
        free (self->types);
        for (int i = 0; i < self->nhook_types; i++)
            free (self->hook_types[i]);
        free (self->hook_types);
        free (self);
        *self_p = NULL;
    }
}

static bool
s_eq (const char *a, const char *b)
{
    return a && b && strcmp (a, b) == 0;
}

bool
gw_filter_match (const gw_filter_t *self, const gw_event_t *event)
{
    if (!self)
        return true;
    if (self->project_id && !s_eq (event->project_id, self->project_id)
        && !(s_eq (event->entity, "projects") && s_eq (event->entity_id, self->project_id)))
        return false;
    if (self->task_id && !s_eq (event->task_id, self->task_id))
        return false;
    if (self->agent_id
        && !(s_eq (event->entity, "agents") && s_eq (event->entity_id, self->agent_id))
        && !s_eq (event->task_id, self->agent_task_id))
        return false;
    if (self->ntypes) {
        bool hit = false;
        for (int i = 0; i < self->ntypes && !hit; i++) {
            const char *type = self->types[i];
            size_t len = strlen (type);
            hit = type[len - 1] == '.' ? strncmp (event->topic, type, len) == 0
                                       : strcmp (event->topic, type) == 0;
        }
        if (!hit)
            return false;
    }
    if (self->nhook_types) {
        if (!event->hook_types)
            return false;
        bool hit = false;
        for (int i = 0; i < self->nhook_types && !hit; i++) {
            char needle[80];
            snprintf (needle, sizeof needle, "\t%s\t", self->hook_types[i]);
            hit = strstr (event->hook_types, needle) != NULL;
        }
        if (!hit)
            return false;
    }
    return true;
}
