{#- Where PostgreSQL and DuckDB differ. Everything else uses dbt's cross-database
    macros or SQL both engines read the same way. -#}

{#- One row per string in a JSON array (none when the value is not an array), as a
    set-returning expression for a select list. -#}
{% macro vero_json_array_strings(json_expression) %}
    {{ return(adapter.dispatch('vero_json_array_strings', 'vero')(json_expression)) }}
{% endmacro %}

{% macro postgres__vero_json_array_strings(json_expression) %}
    jsonb_array_elements_text(
        case when jsonb_typeof({{ json_expression }}) = 'array' then {{ json_expression }} end
    )
{% endmacro %}

{% macro duckdb__vero_json_array_strings(json_expression) %}
    unnest(json_extract_string({{ json_expression }}, '$[*]'))
{% endmacro %}

{#- Strings joined with `delimiter` in code-point order (PostgreSQL would otherwise
    sort by the database's collation, which differs between servers). -#}
{% macro vero_sorted_string_agg(expression, delimiter) %}
    {{ return(adapter.dispatch('vero_sorted_string_agg', 'vero')(expression, delimiter)) }}
{% endmacro %}

{% macro postgres__vero_sorted_string_agg(expression, delimiter) %}
    string_agg({{ expression }}, '{{ delimiter }}' order by {{ expression }} collate "C")
{% endmacro %}

{% macro duckdb__vero_sorted_string_agg(expression, delimiter) %}
    string_agg({{ expression }}, '{{ delimiter }}' order by {{ expression }})
{% endmacro %}
