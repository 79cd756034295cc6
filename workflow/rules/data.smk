rule demo_dataset:
    output:
        instances=f"{DEMO_COCO}/annotations/instances.json",
        captions=f"{DEMO_COCO}/annotations/captions.json",
        images=directory(f"{DEMO_COCO}/images"),
    log:
        "logs/data/demo_dataset.log",
    conda:
        CONDA_ENV
    params:
        demo=config["coco"].get("demo"),
    script:
        "../scripts/demo_dataset.py"


rule coco_annotations:
    output:
        coco_annotation_files(),
    log:
        "logs/data/coco_annotations.log",
    conda:
        CONDA_ENV
    params:
        base_url=config["coco"].get("base_url"),
        annotations=config["coco"].get("annotations"),
    script:
        "../scripts/coco_annotations.py"


rule images_table:
    input:
        **split_inputs("instances"),
        **split_inputs("captions"),
        **local_images(),
    output:
        images="results/data/images.parquet",
        skipped="results/data/skipped_images.parquet",
    log:
        "logs/data/images_table.log",
    conda:
        CONDA_ENV
    resources:
        mem_mb=annotations_mem_mb("instances", "captions"),
        download_workers=config["coco"]["download_workers"],
    params:
        n_images={
            "train": config["coco"]["n_train_images"],
            "eval": config["coco"]["n_eval_images"],
        },
        seed=config["coco"]["seed"],
        on_bad_image=config["coco"]["on_bad_image"],
        images_dir=images_dir_param(),
        base_url=(
            config["coco"]["base_url"]
            if config["coco"]["source"] == "download"
            else None
        ),
    script:
        "../scripts/images_table.py"
