{#- Vero's email event types: each carries its own `<type>_at` (Unix seconds), so two
    arrivals with an identical payload are one event. The same list as
    tap_vero_webhook/schema.py's EMAIL_EVENT_TYPES, one column `<type>_at` each. -#}
{% macro vero_email_event_types() %}
    {{ return(['sent', 'delivered', 'opened', 'clicked', 'bounced', 'failed', 'converted',
               'unsubscribed', 'resubscribed', 'complained']) }}
{% endmacro %}
