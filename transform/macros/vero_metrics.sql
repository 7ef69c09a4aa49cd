{#- The email counts of vero__campaigns and vero__daily_campaign_metrics, over
    vero__events (one row per distinct event). -#}
{% macro vero_email_counts() %}
    count(case when event_type = 'sent' then 1 end) as sends,
    count(case when event_type = 'delivered' then 1 end) as deliveries,
    count(case when event_type = 'opened' then 1 end) as opens,
    count(distinct case when event_type = 'opened' then {{ vero_message_or_user() }} end) as unique_opens,
    count(case when event_type = 'clicked' then 1 end) as clicks,
    count(distinct case when event_type = 'clicked' then {{ vero_message_or_user() }} end) as unique_clicks,
    count(case when event_type = 'bounced' then 1 end) as bounces,
    count(case when event_type = 'bounced' and lower(bounce_type) = 'hard' then 1 end) as hard_bounces,
    count(case when event_type = 'bounced' and lower(bounce_type) = 'soft' then 1 end) as soft_bounces,
    count(distinct case when event_type = 'unsubscribed' then user_id end) as unsubscribes,
    count(distinct case when event_type = 'complained' then user_id end) as complaints,
    count(case when event_type = 'converted' then 1 end) as conversions
{%- endmacro %}

{#- What "unique" counts: the email message, or the user where an event has no message_id. -#}
{% macro vero_message_or_user() -%}
    coalesce('message:' || message_id, 'user:' || user_id)
{%- endmacro %}

{#- The same for one user's emails: the message, or the campaign where an event has none. -#}
{% macro vero_message_or_campaign() -%}
    coalesce('message:' || message_id, 'campaign:' || campaign_id)
{%- endmacro %}

{#- numerator / denominator rounded to 4 decimals, NULL when the denominator is 0. Cast
    first: 1/3 is 0 in PostgreSQL integer division, and it has no round(double, int). -#}
{% macro vero_rate(numerator, denominator) -%}
    cast(round(cast({{ numerator }} as numeric(38, 10)) / nullif({{ denominator }}, 0), 4) as numeric(10, 4))
{%- endmacro %}
